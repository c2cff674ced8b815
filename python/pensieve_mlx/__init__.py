"""Pensieve's MLX engine: the worker process (worker.py) and the GGUF-to-MLX converter."""
