"""Training runtime: configs, the generic trainer, checkpoints, evaluation."""
