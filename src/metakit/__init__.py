"""metakit: meta-learning ("learning to learn") for PyTorch."""

__version__ = "0.1.0"
