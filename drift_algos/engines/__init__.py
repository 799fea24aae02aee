"""Inference engines behind one interface (transformers in-process, vLLM, OpenAI-compatible servers)."""
