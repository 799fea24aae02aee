"""The vectorized multi-turn rollout agent.

Many episodes run at once. Each step of the loop gathers the conversations of all live
episodes into one engine call, steps each environment with its reply, retires finished
episodes (streaming their records out) and starts new groups in their place, so batches
stay full. A group is ``n`` episodes on the same problem (same reset seed and options),
which is what DRIFT's group-normalised weights compare.

Works with any Gymnasium environment with text observations and actions. From drift's
:class:`~drift_envs.base.TextEnv` it also reads ``reply_prefix``, ``system_prompt``,
``stop_strings`` and the episode record in ``info["episode"]``; other environments get
empty defaults and a record built from their rewards and ``info["success"]``.

An engine call that fails for good (:class:`~drift_algos.engines.base.GenerationFailed`: a server
engine out of retries) stops the run with :class:`RolloutFailed` once every finished record is
written; the episodes in flight are dropped whole, so a resumed collection redoes their groups.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from drift_algos.engines.base import Engine, GenerationFailed, Message, SamplingParams, derive_seed
from drift_algos.evaluation.metrics import MultiTurnMetrics, compute_metrics, first_success
from drift_algos.records import Sampling, Trajectory, TrajectoryWriter

logger = logging.getLogger(__name__)


@dataclass
class RolloutConfig:
    """What to sample."""

    num_prompts: int = 32
    """Problems (groups) to run."""
    n: int = 4
    """Trajectories per problem."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_new_tokens: int | None = None
    """Token limit per turn; ``None``: the environment's ``max_reply_tokens`` (512 if it has none)."""
    seed: int = 0
    """Seed for the choice of problems, the environments' resets and sampling."""
    shuffle: bool = True
    """Draw the problems at random (seeded); ``False`` takes the first ``num_prompts``."""
    max_live: int = 256
    """Episodes in flight at once (bounds memory; whole groups are started together)."""
    logprobs: bool = False
    """Record the sampled tokens' log-probabilities per turn (``turn_logprobs``)."""
    record_token_ids: bool = False
    """Record each turn's prompt and generated token ids (``turn_prompt_ids``, ``turn_completion_ids``): online
    algorithms train on exactly those tokens."""

    def __post_init__(self) -> None:
        for name in ("num_prompts", "n", "max_new_tokens", "max_live"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.max_new_tokens)


@dataclass
class RolloutSummary:
    """What a rollout run produced."""

    metrics: MultiTurnMetrics
    """Per-turn accuracy, success within k turns, ... over all episodes."""
    prompts: int
    """Groups run."""
    generated_tokens: int
    """Tokens generated, all turns."""
    elapsed_s: float
    """Wall-clock seconds."""
    malformed_replies: int
    """Replies without a well-formed answer (format penalty charged)."""
    replies: int
    """Replies generated."""

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.elapsed_s if self.elapsed_s > 0 else float("nan")


@dataclass
class _Episode:
    env: gym.Env
    group: int
    sample: int
    prompt_id: str
    gold: str
    messages: list[Message]
    successes: list[bool] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    details: dict[str, dict] = field(default_factory=dict)
    turn_tokens: list[int] = field(default_factory=list)
    turn_logprobs: list[float | None] = field(default_factory=list)
    turn_prompt_ids: list[list[int]] = field(default_factory=list)
    turn_completion_ids: list[list[int]] = field(default_factory=list)
    format_penalty: float = 0.0


class RolloutFailed(GenerationFailed):
    """The engine failed for good in the middle of a rollout (e.g. its servers stayed down past the retry budget).

    Nothing is lost or duplicated: every finished episode's record was written before this is raised, and the
    episodes still in flight are dropped whole, never written half. Their groups are incomplete in the output, so a
    resumed collection (``drift rollout --resume``, which keeps complete groups only) runs them again with the same
    seeds.
    """

    def __init__(self, cause: GenerationFailed, *, finished: list[Trajectory], unfinished_groups: list[int],
                 written: bool):
        self.finished = finished
        """The trajectories this run finished (written to its writer, when it had one)."""
        self.unfinished_groups = unfinished_groups
        """Groups not finished (in flight or not started), in order."""
        super().__init__(f"{cause}; {len(finished)} finished trajectories {'were written' if written else 'kept'}, "
                         f"{len(unfinished_groups)} groups unfinished", failed=cause.failed, total=cause.total)


ProgressFn = Callable[[int, int, int], None]
"""``(episodes_done, episodes_total, generated_tokens)``."""


class RolloutAgent:
    """Runs groups of episodes of one environment with one engine."""

    def __init__(self, engine: Engine, make_env: Callable[[], gym.Env], *, env_id: str = "", model_name: str = ""):
        self.engine = engine
        self.make_env = make_env
        self.env_id = env_id
        self.model_name = model_name
        probe = make_env().unwrapped
        self.reply_prefix: str = getattr(probe, "reply_prefix", "")
        self.system_prompt: str | None = getattr(probe, "system_prompt", None)
        self.stop: tuple[str, ...] = tuple(getattr(probe, "stop_strings", ()))
        self.max_reply_tokens: int = int(getattr(probe, "max_reply_tokens", 512))
        config = getattr(probe, "config", None)
        self.max_turns: int | None = getattr(config, "max_turns", None)
        problems = getattr(probe, "problems", None)
        self.num_problems: int | None = len(problems) if problems is not None else None

    def choose_problems(self, cfg: RolloutConfig) -> list[int | None]:
        """Problem indices for the groups (``None``: the env draws one from its seed)."""
        if self.num_problems is None:
            return [None] * cfg.num_prompts
        if cfg.num_prompts > self.num_problems:
            raise ValueError(f"asked for {cfg.num_prompts} prompts but the environment has "
                             f"{self.num_problems} problems")
        if not cfg.shuffle:
            return list(range(cfg.num_prompts))
        rng = np.random.default_rng(cfg.seed)
        return [int(i) for i in rng.choice(self.num_problems, size=cfg.num_prompts, replace=False)]

    def _start(self, group: int, sample: int, problem: int | None, cfg: RolloutConfig) -> _Episode:
        env = self.make_env()
        options = {"problem_index": problem} if problem is not None else None
        # Same seed for every member: the group starts from one identical prompt.
        observation, info = env.reset(seed=cfg.seed * 1_000_003 + group, options=options)
        messages: list[Message] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": observation})
        prompt_id = str(info.get("problem_id", f"{self.env_id}-{group}"))
        return _Episode(env, group, sample, prompt_id, str(info.get("gold", "")), messages)

    def run(
        self,
        cfg: RolloutConfig,
        *,
        writer: TrajectoryWriter | None = None,
        problems: Sequence[int | None] | None = None,
        progress: ProgressFn | None = None,
        groups: Sequence[int] | None = None,
    ) -> tuple[list[Trajectory], RolloutSummary]:
        """Run ``cfg.num_prompts`` groups of ``cfg.n`` episodes; stream records to ``writer``.

        ``groups`` gives each problem's group index in the whole collection (default 0, 1, ...):
        a shard or a resumed run passes the indices it still owes, so every trajectory gets the
        seed, and so the samples, it has in one uninterrupted run.
        """
        if cfg.max_new_tokens is None:
            cfg = dataclasses.replace(cfg, max_new_tokens=self.max_reply_tokens)
        problems = list(problems) if problems is not None else self.choose_problems(cfg)
        groups = list(groups) if groups is not None else list(range(len(problems)))
        if len(groups) != len(problems):
            raise ValueError(f"got {len(groups)} group indices for {len(problems)} problems")
        total = len(problems) * cfg.n
        pending = list(zip(groups, problems, strict=True))[::-1]
        live: list[_Episode] = []
        done: list[Trajectory] = []
        tokens = replies = malformed = 0
        start = time.perf_counter()
        while pending or live:
            while pending and (not live or len(live) + cfg.n <= cfg.max_live):
                group, problem = pending.pop()
                live.extend(self._start(group, s, problem, cfg) for s in range(cfg.n))
            params = SamplingParams(
                temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                stop=self.stop, logprobs=cfg.logprobs,
            )
            # One seed per episode and turn: a trajectory is the same whatever else shares its batch,
            # so sharded, resumed and differently batched runs sample what one whole run samples.
            seeds = [derive_seed(cfg.seed, e.group, e.sample, len(e.successes) + 1) for e in live]
            try:
                completions = self.engine.generate([e.messages for e in live], params,
                                                   reply_prefix=self.reply_prefix, seeds=seeds)
            except GenerationFailed as err:
                for episode in live:
                    episode.env.close()
                unfinished = sorted({e.group for e in live} | {g for g, _ in pending})
                raise RolloutFailed(err, finished=done, unfinished_groups=unfinished,
                                    written=writer is not None) from err
            still: list[_Episode] = []
            for episode, (completion,) in zip(live, completions, strict=True):
                reply = self.reply_prefix + completion.text
                observation, reward, terminated, truncated, info = episode.env.step(reply)
                turn = len(episode.successes) + 1
                episode.messages.append({"role": "assistant", "content": info.get("rendered_reply", reply)})
                episode.successes.append(bool(info.get("success", terminated)))
                episode.rewards.append(float(reward))
                episode.turn_tokens.append(len(completion.token_ids))
                episode.turn_logprobs.append(sum(completion.logprobs) if completion.logprobs is not None else None)
                if cfg.record_token_ids:
                    if completion.prompt_token_ids is None:
                        raise ValueError(f"the {self.engine.name} engine does not report prompt token ids; "
                                         "record_token_ids needs one that does")
                    episode.turn_prompt_ids.append(list(completion.prompt_token_ids))
                    episode.turn_completion_ids.append(list(completion.token_ids))
                penalty = float(info.get("format_penalty", 0.0))
                episode.format_penalty += penalty
                episode.details[f"t{turn}"] = {
                    "env_reward": float(info.get("score", reward)), "format_penalty": penalty,
                    "actions": int(info.get("is_action", True)), "success": episode.successes[-1],
                }
                tokens += len(completion.token_ids)
                replies += 1
                malformed += int(not info.get("well_formed", True))
                if terminated or truncated:
                    record = self._record(episode, info, cfg)
                    done.append(record)
                    if writer is not None:
                        writer.write(record)
                    episode.env.close()
                else:
                    episode.messages.append({"role": "user", "content": observation})
                    still.append(episode)
            live = still
            if progress is not None:
                progress(len(done), total, tokens)
        elapsed = time.perf_counter() - start
        outcomes = [t.outcome for t in done]
        summary = RolloutSummary(
            metrics=compute_metrics(outcomes, self.max_turns), prompts=len(problems), generated_tokens=tokens,
            elapsed_s=elapsed, malformed_replies=malformed, replies=replies,
        )
        logger.info("rollout: %d episodes, %d tokens in %.1f s", len(done), tokens, elapsed)
        return done, summary

    def _record(self, episode: _Episode, info: dict, cfg: RolloutConfig) -> Trajectory:
        stats = info.get("episode")
        limit = self.max_turns or len(episode.successes)
        turns = range(1, max(limit, len(episode.successes)) + 1)
        verifier = {f"t{t}": int(t <= len(episode.successes) and episode.successes[t - 1]) for t in turns}
        if stats is not None:
            turn_rewards, norms = dict(stats.turn_rewards), list(stats.answer_norms)
            t_star, rep = stats.t_star, stats.repetition_penalty
        else:
            scores = [episode.details[f"t{t}"]["env_reward"] for t in range(1, len(episode.successes) + 1)]
            turn_rewards = {f"t{t}": scores[t - 1] if t <= len(scores) else 0.0 for t in turns}
            norms, rep = [], None
            t_star = first_success(episode.successes)
        return Trajectory(
            prompt_id=episode.prompt_id,
            messages=episode.messages,
            verifier=verifier,
            turn_rewards=turn_rewards,
            gold=episode.gold,
            reward_details=episode.details,
            t_star=t_star,
            answer_norms=norms,
            format_penalty=episode.format_penalty,
            env_id=self.env_id,
            model=self.model_name,
            sampling=cfg.sampling,
            seed=cfg.seed,
            sample_index=episode.sample,
            group_index=episode.group,
            turn_tokens=episode.turn_tokens,
            turn_logprobs=episode.turn_logprobs,
            turn_prompt_ids=episode.turn_prompt_ids,
            turn_completion_ids=episode.turn_completion_ids,
            repetition_penalty=rep,
            success=t_star is not None,
        )
