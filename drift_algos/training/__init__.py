"""The shared training core.

- :mod:`.samples`: conversations and engine-recorded token ids become token batches with loss masks;
- :mod:`.losses`: per-token log-probs and the per-term maths (NLL, clipped ratios, k3 KL, value clipping);
- :mod:`.objectives`: what an algorithm minimises, as a function of the policy's per-token log-probs;
- :mod:`.trainer`: the one optimisation loop (accumulation, schedule, LoRA, checkpoints);
- :mod:`.online`: the sample-then-train iteration loop that online algorithms share.
"""

from drift_algos.training.trainer import Schedule, TrainConfig, Trainer, TrainResult

__all__ = ["Schedule", "TrainConfig", "TrainResult", "Trainer"]
