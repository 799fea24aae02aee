"""The `drift` command-line interface (installed as the `drift_cli` package)."""
