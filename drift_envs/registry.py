"""Environment ids, CLI aliases, entry points and ``module:Class`` specs.

A drift environment is any ``gymnasium.Env`` with text observations and actions. It
becomes available by any of:

* ``gymnasium.register("my/Env-v0", entry_point="my_pkg.envs:MyEnv")`` (in code you import);
* an entry point in the ``drift.envs`` group of your package
  (``my/Env-v0 = "my_pkg.envs:MyEnv"``), found without importing anything else;
* ``--env my_pkg.envs:MyEnv`` on the command line (registered on first use), or gymnasium's
  own ``my_pkg.envs:my/Env-v0`` (import ``my_pkg.envs``, then make ``my/Env-v0``).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

import gymnasium as gym

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "drift.envs"

BUILTIN = {
    "drift/MathCorrection-v0": "drift_envs.math.env:MathCorrectionEnv",
    "drift/MultipleChoice-v0": "drift_envs.multiple_choice.env:MultipleChoiceEnv",
    "drift/CodeFeedback-v0": "drift_envs.code.env:CodeFeedbackEnv",
}
ALIASES = {"math": "drift/MathCorrection-v0", "gpqa": "drift/MultipleChoice-v0", "mc": "drift/MultipleChoice-v0",
           "code": "drift/CodeFeedback-v0"}


class UnknownEnvError(LookupError):
    """No environment matches a spec; the message lists what was tried."""


@dataclass(frozen=True)
class EnvInfo:
    """A registered environment, as ``drift envs`` lists it."""

    id: str
    """Gymnasium id."""
    entry_point: str
    """``module:Class`` (or a callable's repr)."""
    origin: str
    """``builtin``, ``entry point`` or ``registered``."""
    aliases: tuple[str, ...] = ()
    """CLI aliases for this id."""


def register_builtin() -> None:
    for env_id, entry_point in BUILTIN.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point)


def load_entry_points() -> list[str]:
    """Register the environments that installed packages declare under ``drift.envs``."""
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in gym.registry:
            gym.register(id=ep.name, entry_point=ep.value)
        found.append(ep.name)
    return found


def resolve_env_id(spec: str) -> str:
    """The Gymnasium id for a CLI ``--env`` value (alias, id, or ``module:Class``)."""
    register_builtin()
    if spec in ALIASES:
        return ALIASES[spec]
    if spec in gym.registry:
        return spec
    load_entry_points()
    if spec in gym.registry:
        return spec
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise UnknownEnvError(
                f"unknown environment '{spec}': cannot import module '{module_name}' ({err})") from None
        target = getattr(module, attr, None)
        if isinstance(target, type) and issubclass(target, gym.Env):
            # gymnasium.make reads "a:b" as "import a, then make b": register under an id without a colon.
            env_id = f"{module_name}/{attr}"
            if env_id not in gym.registry:
                gym.register(id=env_id, entry_point=spec)
            return env_id
        if attr in gym.registry:  # gymnasium's "module:EnvId" form; importing registered it
            return attr
        raise UnknownEnvError(
            f"unknown environment '{spec}': '{module_name}' has no gymnasium.Env class or registered id '{attr}'")
    known = ", ".join(sorted(ALIASES) + sorted(e.id for e in list_envs()))
    raise UnknownEnvError(f"unknown environment '{spec}'; known: {known}; or give module.path:ClassName")


def list_envs() -> list[EnvInfo]:
    """Built-in drift environments, entry-point environments and user-registered ones.

    Gymnasium's own environments (CartPole, ...) are left out.
    """
    register_builtin()
    from_entry_points = set(load_entry_points())
    infos = []
    for env_id, spec in sorted(gym.registry.items()):
        entry = spec.entry_point if isinstance(spec.entry_point, str) else (
            f"{spec.entry_point.__module__}:{spec.entry_point.__qualname__}")
        if env_id in BUILTIN:
            origin = "builtin"
        elif env_id in from_entry_points:
            origin = "entry point"
        elif entry.startswith(("gymnasium.", "shimmy.", "ale_py")):
            continue
        else:
            origin = "registered"
        aliases = tuple(alias for alias, target in ALIASES.items() if target == env_id)
        infos.append(EnvInfo(env_id, entry, origin, aliases))
    return infos


def env_factory(env_id: str, kwargs: dict[str, object]) -> Callable[[], gym.Env]:
    """A function that makes a new ``env_id`` environment with ``kwargs`` (the agent makes one per episode;
    the passive checker is skipped: it would run on each)."""
    return lambda: gym.make(env_id, disable_env_checker=True, **kwargs)


def make_env(spec: str, **kwargs) -> gym.Env:
    """``gymnasium.make`` for a CLI spec; keyword arguments go to the environment."""
    return gym.make(resolve_env_id(spec), **kwargs)
