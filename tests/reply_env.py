"""A one-turn text environment whose reward is a property of any reply: tests that need varied returns from a
random tiny model (GRPO's advantages, DRIFT's weights) without it solving anything use it as
``--env reply_env:ReplyEnv`` (with tests/ on the path)."""

from __future__ import annotations

import gymnasium as gym


class ReplyEnv(gym.Env):
    """One question; the reward is the reply's character-code sum modulo 5, over 4 (1 counts as solved)."""

    metadata = {"render_modes": []}

    def __init__(self, **settings: object):
        # The pipeline's settings (max_turns, split, ...) do not apply to a one-turn environment.
        self.observation_space = gym.spaces.Text(max_length=200)
        self.action_space = gym.spaces.Text(max_length=1 << 20)
        self._question = ""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        n = int(self.np_random.integers(0, 1000))
        self._question = f"What is {n} + {n}?"
        return self._question, {"problem_id": f"reply-{seed}", "gold": str(2 * n)}

    def step(self, action: str):
        reward = (sum(map(ord, action)) % 5) / 4
        return "", reward, True, False, {"success": reward == 1.0}


class SplitlessReplyEnv(ReplyEnv):
    """:class:`ReplyEnv` with a constructor that takes nothing: drift's settings (``split`` included) do not apply."""

    def __init__(self) -> None:
        super().__init__()
