"""Evaluation: greedy multi-turn episodes on held-out problems (:mod:`.evaluator`) and their statistics
(:mod:`.metrics`: accuracy per turn, multi@k, correction and flip rates, intervals)."""
