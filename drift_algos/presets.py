"""Named sizes for `drift run`: how many rollouts, how long to train, how much to evaluate.

``smoke`` and ``default`` leave the reply length to the environment (``max_reply_tokens``:
20 tokens for an answer-only math reply, 512 for code), so they work on every environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drift_algos.algorithms.drift import DriftConfig
from drift_algos.algorithms.grpo import GRPOConfig
from drift_algos.algorithms.ppo import PPOConfig
from drift_algos.evaluation.evaluator import EvalConfig
from drift_algos.rollout.agent import RolloutConfig
from drift_algos.training.online import OnlineConfig
from drift_algos.training.trainer import TrainConfig


@dataclass
class Preset:
    """A complete set of sizes and hyper-parameters for one run."""

    name: str
    """Preset name."""
    description: str
    """What it is for and what it costs (measured figures only; `drift run --help` and the README say the same)."""
    max_turns: int
    """Turn (and answer) limit of training and evaluation episodes."""
    rollout: RolloutConfig
    """Reference-policy sampling."""
    drift: DriftConfig
    """DRIFT weighting."""
    train: TrainConfig
    """Optimisation."""
    eval: EvalConfig
    """Held-out evaluation."""
    env_args: dict[str, object] = field(default_factory=dict)
    """Environment settings the preset relies on, applied when the environment accepts them (its constructor takes
    them, or ``**kwargs``; a drift ``TextEnv``: its config's fields). One it does not accept is left out with a
    warning and recorded in the run's config.json (``env_args_not_applied``), as are ``max_turns``/``max_actions``
    and the ``split``."""
    online: OnlineConfig = field(default_factory=OnlineConfig)
    """Online algorithms' loop (iterations, prompts and group size per iteration); sampling settings come from
    ``rollout``, optimisation from ``train`` (epochs per iteration, mini-batch size)."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """GRPO's settings."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO's settings."""


def smoke() -> Preset:
    return Preset(
        "smoke", "checks the whole pipeline, learns nothing measurable (measured: 8 min on a 2-core CPU shared with "
        "other jobs)",
        max_turns=2,
        rollout=RolloutConfig(num_prompts=8, n=2, temperature=0.7),
        drift=DriftConfig(),
        train=TrainConfig(learning_rate=1e-5, epochs=1, batch_size=4),
        eval=EvalConfig(num_problems=16, bootstrap_samples=200),
        online=OnlineConfig(iterations=2, prompts_per_iteration=4, group_size=2),
        grpo=GRPOConfig(kl_coef=0.04),
        ppo=PPOConfig(kl_coef=0.04),
    )


def default() -> Preset:
    return Preset(
        "default", "the embedded model on a 2-core CPU (measured: 9.5 min on math, seed 0)",
        max_turns=3,
        rollout=RolloutConfig(num_prompts=64, n=8, temperature=0.7),
        drift=DriftConfig(gamma=0.9, beta=0.1, min_weight=0.01, drop_unsolved_groups=True),
        train=TrainConfig(learning_rate=1e-5, epochs=2, batch_size=8),
        eval=EvalConfig(num_problems=200),
        # Online: 6 iterations of 8 prompts x 4 = 192 trajectories. Measured on the shared 2-core CPU: a smoke
        # iteration (4 x 2, 1 epoch) took 31 s once warm (118 s the first), so expect a few minutes an
        # iteration here (not timed).
        online=OnlineConfig(iterations=6, prompts_per_iteration=8, group_size=4),
        grpo=GRPOConfig(kl_coef=0.04),
        ppo=PPOConfig(kl_coef=0.04),
    )


def paper() -> Preset:
    return Preset(
        "paper", "the DRIFT release's settings (1,800 prompts x 16, 5 turns, 512 tokens): a GPU job (not measured)",
        max_turns=5,
        rollout=RolloutConfig(num_prompts=1800, n=16, temperature=1.0, top_p=1.0, max_new_tokens=512),
        drift=DriftConfig(gamma=0.9, beta=0.1),
        train=TrainConfig(learning_rate=5e-6, epochs=1, batch_size=2, grad_accum=16, warmup_ratio=0.1,
                          weight_decay=0.1, max_grad_norm=1.0, max_prompt_tokens=8192, max_completion_tokens=512),
        eval=EvalConfig(num_problems=500, max_new_tokens=512),
    )


PRESETS = {"smoke": smoke, "default": default, "paper": paper}
"""Preset factories by name."""


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}' (available: {', '.join(PRESETS)})")
    return PRESETS[name]()
