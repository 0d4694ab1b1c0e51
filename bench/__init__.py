"""Benchmarks and the training recipe of the bundled default model (run from the repo root)."""
