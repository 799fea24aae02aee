"""Environment ids, CLI aliases, entry points and ``module:Class`` specs.

A drift environment is any ``gymnasium.Env`` with text observations and actions. It
becomes available by any of:

* ``gymnasium.register("my/Env-v0", entry_point="my_pkg.envs:MyEnv")`` (in code you import);
* an entry point in the ``drift.envs`` group of your package
  (``my/Env-v0 = "my_pkg.envs:MyEnv"``), found without importing anything else;
* ``--env my_pkg.envs:MyEnv`` on the command line (registered on first use), or gymnasium's
  own ``my_pkg.envs:my/Env-v0`` (import ``my_pkg.envs``, then make ``my/Env-v0``).

The commands make environments through :func:`env_factory`, which gives an environment only the arguments its
constructor accepts: drift's settings that it does not take (``split``, ``max_turns``, ``max_actions``, a preset's
``env_args``) are left out with a warning, and an argument the user gave explicitly that it does not take is an
error naming the flag.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

from drift_envs.base import TextEnv

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
    if "/" in spec and ":" not in spec:
        # The id a "module:Class" spec is registered under, read back (from a run's config.json) in a new process.
        module_name, _, attr = spec.partition("/")
        try:
            target = getattr(importlib.import_module(module_name), attr, None)
        except ImportError:
            target = None
        if isinstance(target, type) and issubclass(target, gym.Env):
            return resolve_env_id(f"{module_name}:{attr}")
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


NOT_APPLIED_MEANING = {
    "split": "train and evaluation problems may overlap",
    "max_turns": "the environment's own turn limit applies",
    "max_actions": "the environment's own answer limit applies",
}
"""What it means when a setting drift adds cannot be given to an environment (others: its own default applies)."""


class EnvArgumentError(TypeError):
    """An argument the user gave explicitly (a flag, ``--env-arg``) that the environment's constructor does not take."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name
        """The argument."""


def accepted_arguments(env_id: str) -> frozenset[str] | None:
    """The keyword arguments the constructor of ``env_id``'s entry point takes; ``None``: any.

    A ``**kwargs`` parameter takes anything, except in a :class:`~drift_envs.base.TextEnv`, whose
    ``**overrides`` become fields of its ``config_class``: there the fields are what it takes.
    """
    entry = gym.spec(env_id).entry_point
    try:
        creator = load_env_creator(entry) if isinstance(entry, str) else entry
        # A class's own signature: its __init__ without self, or none at all when it defines no __init__.
        parameters = list(inspect.signature(creator).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read
        return None
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        if not (isinstance(creator, type) and issubclass(creator, TextEnv)):
            return None
        names |= {f.name for f in dataclasses.fields(creator.config_class)}
    return frozenset(names)


@dataclass(frozen=True)
class EnvFactory:
    """Makes new environments of one id with the arguments its constructor accepts (the agent makes one per
    episode; gymnasium's passive checker is skipped: it would run on each)."""

    env_id: str
    """Gymnasium id."""
    kwargs: dict[str, object]
    """The arguments each environment gets."""
    not_applied: dict[str, str] = field(default_factory=dict)
    """Settings drift (or a preset) meant to give that the constructor does not take, each with what leaving it
    out means; recorded in the run directory."""

    def __call__(self) -> gym.Env:
        return gym.make(self.env_id, disable_env_checker=True, **self.kwargs)


def env_factory(env_id: str, kwargs: Mapping[str, object], *, explicit: Mapping[str, str] | None = None,
                warn: bool = True) -> EnvFactory:
    """A factory of ``env_id`` environments given those of ``kwargs`` their constructor accepts.

    ``explicit`` names the arguments the user gave (each with the flag that gave it, for the message): one the
    constructor does not take is an :class:`EnvArgumentError`. The others are drift's settings (``split``,
    ``max_turns``, a preset's ``env_args``): one the constructor does not take is left out, in
    :attr:`EnvFactory.not_applied`, with one warning saying what that means (``warn=False``: no warning, for a
    second factory of the same settings). A drift :class:`~drift_envs.base.TextEnv` takes all of its config's
    fields, so it gets ``kwargs`` unchanged.
    """
    env_id = resolve_env_id(env_id)
    explicit = dict(explicit or {})
    accepted = accepted_arguments(env_id)
    if accepted is None:
        return EnvFactory(env_id, dict(kwargs))
    takes = ", ".join(sorted(accepted)) or "no arguments"
    applied: dict[str, object] = {}
    meanings: dict[str, str] = {}
    for name, value in kwargs.items():
        if name in accepted:
            applied[name] = value
        elif name in explicit:
            raise EnvArgumentError(f"{explicit[name]}: environment '{env_id}' does not accept '{name}' "
                                   f"(its constructor takes: {takes})", name)
        else:
            meanings[name] = NOT_APPLIED_MEANING.get(name, "the environment's own default applies")
    if meanings and warn:
        logger.warning("environment '%s' does not accept %s: not applied (%s)", env_id, ", ".join(meanings),
                       "; ".join(f"{name}: {meaning}" for name, meaning in meanings.items()))
    not_applied = {name: f"not accepted by the environment's constructor: {meaning}"
                   for name, meaning in meanings.items()}
    return EnvFactory(env_id, applied, not_applied)


def make_env(spec: str, **kwargs) -> gym.Env:
    """``gymnasium.make`` for a CLI spec; keyword arguments go to the environment."""
    return gym.make(resolve_env_id(spec), **kwargs)
