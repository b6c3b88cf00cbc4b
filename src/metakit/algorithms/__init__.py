"""Meta-learning algorithms, one module each, behind one protocol (see :mod:`.base`)."""

from .base import Algorithm, Learner, accuracy, available_algorithms, get_algorithm, register

__all__ = ["Algorithm", "Learner", "accuracy", "available_algorithms", "get_algorithm", "register"]
