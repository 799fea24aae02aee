"""drift_algos: rollout agent, inference engines, trajectory store, training core and algorithms."""
