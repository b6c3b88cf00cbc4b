"""Meta-learning algorithms, one module each, behind one protocol (see :mod:`.base`)."""

from .base import Algorithm, BuildContext, Learner, accuracy, available_algorithms, get_algorithm, register
from .protonet import ProtoNet

__all__ = ["Algorithm", "BuildContext", "Learner", "accuracy", "available_algorithms", "get_algorithm", "register"]
