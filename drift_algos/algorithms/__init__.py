"""Algorithms on the shared training core: each a config, how trajectories become samples, and a loss."""
