"""Rollouts: the vectorized multi-turn agent (:mod:`.agent`) and crash-safe, sharded collection (:mod:`.collection`)."""
