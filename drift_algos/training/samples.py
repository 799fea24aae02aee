"""Turning conversations into token sequences with loss masks.

A training sample is a conversation, a weight, and which assistant messages carry the
loss: the last one (as in the DRIFT release: the whole preceding conversation, rendered
with the chat template, is the prompt) or every assistant message (each carrying the
trajectory's weight). Segments are tokenised separately so the mask is exact; the target
is the message's text followed by the end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from drift_algos.engines.base import Message


class LossTarget(str, Enum):
    """Which assistant messages carry the loss."""

    LAST = "last"
    """Only the last assistant message (the release's choice)."""
    ALL = "all"
    """Every assistant message."""


@dataclass
class Sample:
    """One conversation to train on."""

    messages: list[Message]
    """The conversation, ending with an assistant message."""
    weight: float = 1.0
    """Per-sample loss weight (DRIFT: the importance weight)."""
    prompt_id: str = ""
    """Group the sample came from (for diagnostics)."""
    recorded: TokenizedSample | None = None
    """The last turn exactly as the rollout engine tokenised it (when the record has token ids); trained on
    instead of re-rendering the text when ``TrainConfig.recorded_ids``."""


@dataclass
class TokenizedSample:
    """Token ids with a loss mask."""

    input_ids: list[int]
    """Prompt and target tokens."""
    loss_mask: list[bool]
    """True where the token is a target (its NLL counts)."""
    weight: float
    """Per-sample loss weight."""
    advantages: list[float] | None = None
    """Per-token coefficient (online algorithms), aligned with ``input_ids``."""
    old_logprobs: list[float] | None = None
    """Sampling policy's log-prob of each token (0 at position 0), aligned with ``input_ids``."""
    ref_logprobs: list[float] | None = None
    """Reference policy's log-prob of each token, aligned with ``input_ids``."""
    old_values: list[float] | None = None
    """Value estimates before the update (PPO), aligned with ``input_ids``."""
    returns: list[float] | None = None
    """Value targets (PPO), aligned with ``input_ids``."""

    def __len__(self) -> int:
        return len(self.input_ids)


def _render(tokenizer, messages: Sequence[Message], *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_sample(
    tokenizer, sample: Sample, *, target: LossTarget = LossTarget.LAST, max_prompt_tokens: int = 8192,
    max_completion_tokens: int = 512,
) -> TokenizedSample:
    """Tokens and mask for ``sample``; the prompt is truncated on the left, targets on the right."""
    messages = sample.messages
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant or assistant[-1] != len(messages) - 1:
        raise ValueError(f"sample {sample.prompt_id!r}: the conversation must end with an assistant message")
    eot = tokenizer.eos_token_id
    targets = assistant if LossTarget(target) is LossTarget.ALL else assistant[-1:]
    ids: list[int] = []
    mask: list[bool] = []
    consumed = ""  # text already turned into tokens
    for index in targets:
        prompt_text = _render(tokenizer, messages[:index], generation_prompt=True)
        if not prompt_text.startswith(consumed):
            raise ValueError("the chat template does not render conversations as prefixes of each other; "
                             "use the 'last' loss target")
        context = _ids(tokenizer, prompt_text[len(consumed):])
        completion = (_ids(tokenizer, messages[index]["content"]) + [eot])[:max_completion_tokens]
        ids += context
        mask += [False] * len(context)
        ids += completion
        mask += [True] * len(completion)
        consumed = prompt_text + messages[index]["content"] + tokenizer.eos_token
    budget = max_prompt_tokens + sum(mask)
    if len(ids) > budget:
        # Left truncation keeps the end of the conversation, where the targets are: at most
        # max_prompt_tokens of context besides the target tokens.
        cut = len(ids) - budget
        ids, mask = ids[cut:], mask[cut:]
    return TokenizedSample(ids, mask, float(sample.weight))


def turn_samples(trajectory, *, weight: float = 1.0) -> list[TokenizedSample]:
    """One sample per assistant turn from the ids the engine recorded (``turn_prompt_ids`` and
    ``turn_completion_ids``): the prompt exactly as the engine saw it, masked, then exactly the generated ids.

    Environment-written text (feedback) only ever appears inside a later turn's prompt, so it is always masked.
    Each turn is its own sequence because the engine re-encoded the whole conversation for every turn: gluing
    turns together would pair a turn's tokens with a context the model never saw.
    """
    prompts, completions = trajectory.turn_prompt_ids, trajectory.turn_completion_ids
    if not completions or len(prompts) != len(completions):
        raise ValueError(f"trajectory {trajectory.prompt_id!r} has no recorded token ids (rollouts need "
                         "RolloutConfig(record_token_ids=True))")
    return [TokenizedSample(list(p) + list(c), [False] * len(p) + [True] * len(c), weight)
            for p, c in zip(prompts, completions, strict=True)]
