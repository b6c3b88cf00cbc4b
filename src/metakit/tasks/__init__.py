"""Episodes, episode samplers and task families.

A task family (:class:`TaskFamily`) is what a config's ``task:`` section names: the registered
families are N-way K-shot classification (:mod:`.classification`), sinusoid regression
(:mod:`.sinusoid`), Santoro et al.'s image sequences (:mod:`.sequence`) and the environment
distributions of meta-RL on the base :mod:`.rl`: Bernoulli bandits (:mod:`.bandits`), random
tabular MDPs (:mod:`.tabular_mdp`), 2D navigation (:mod:`.navigation`) and half-cheetah
direction / velocity (:mod:`.locomotion`).
"""

from .classification import ClassificationFamily, DatasetSource, available_sources, register_source
from .episode import Episode, EpisodeBatch
from .family import BuildContext, TaskFamily, available_families, get_family, register_family
from .rl import EnvBatch, EnvFamily, EnvTask, env_family
from .bandits import BanditFamily
from .tabular_mdp import TabularMDPFamily
from .navigation import Navigation2DFamily
from .locomotion import HalfCheetahDirectionFamily, HalfCheetahVelocityFamily
from .sampler import EpisodeIndices, EpisodeSampler, FixedEpisodes
from .sequence import SequenceBatch, SequenceFamily
from .sinusoid import FixedSinusoidTasks, SinusoidFamily, SinusoidParams, SinusoidTasks, sinusoid

__all__ = [
    "BuildContext",
    "ClassificationFamily",
    "DatasetSource",
    "Episode",
    "EpisodeBatch",
    "EpisodeIndices",
    "EnvBatch",
    "EnvFamily",
    "EnvTask",
    "EpisodeSampler",
    "FixedEpisodes",
    "FixedSinusoidTasks",
    "SequenceBatch",
    "SequenceFamily",
    "HalfCheetahDirectionFamily",
    "HalfCheetahVelocityFamily",
    "Navigation2DFamily",
    "SinusoidFamily",
    "SinusoidParams",
    "SinusoidTasks",
    "TaskFamily",
    "available_families",
    "available_sources",
    "env_family",
    "get_family",
    "register_family",
    "register_source",
    "sinusoid",
]
