"""Meta-learning algorithms, one module each, behind one protocol (see :mod:`.base`)."""

from .base import Algorithm, BuildContext, Learner, accuracy, available_algorithms, get_algorithm, register
from .protonet import ProtoNet
from .siamese import SiameseNet
from .matching import MatchingNet
from .relation import RelationNet
from .nearest import NearestNeighbour
from .baseline import Baseline
from .maml import MAML
from .metasgd import MetaSGD
from .anil import ANIL
from .reptile import Reptile
from .mann import MANN
from .lstm import LSTMMetaLearner
from .snail import SNAIL
from .references import Reference
from .rl2 import RL2
from .maml_rl import MAMLRL

__all__ = [
    "Algorithm", "BuildContext", "Learner", "accuracy", "available_algorithms", "get_algorithm", "register",
    "ProtoNet", "SiameseNet", "MatchingNet", "RelationNet", "NearestNeighbour", "Baseline",
    "MAML", "MetaSGD", "ANIL", "Reptile",
    "MANN", "LSTMMetaLearner", "SNAIL",
    "RL2", "MAMLRL", "Reference",
]
