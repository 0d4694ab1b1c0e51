"""Training recipe of tappa-mini, the bundled default model (see bench/train/README.md)."""
