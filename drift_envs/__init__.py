"""drift_envs: Gymnasium text environments for multi-turn RL of LLMs.

Importing this package registers ``drift/MathCorrection-v0``, ``drift/MultipleChoice-v0``
and ``drift/CodeFeedback-v0`` (lazily: nothing heavy is imported until ``gymnasium.make``).
"""

from drift_envs.base import EpisodeStats, FeedbackMode, Problem, TextEnv, TextEnvConfig, TextSpace, Verdict
from drift_envs.parsing import ParsedReply, ParseMode, parse_reply
from drift_envs.registry import ALIASES, EnvInfo, UnknownEnvError, list_envs, make_env, register_builtin, resolve_env_id

register_builtin()

__all__ = [
    "ALIASES", "EnvInfo", "EpisodeStats", "FeedbackMode", "ParseMode", "ParsedReply", "Problem", "TextEnv",
    "TextEnvConfig", "TextSpace", "UnknownEnvError", "Verdict", "list_envs", "make_env", "parse_reply",
    "register_builtin", "resolve_env_id",
]
