"""Episodes, episode samplers and task families."""

from .episode import Episode, EpisodeBatch
from .sampler import EpisodeIndices, EpisodeSampler, FixedEpisodes
from .sinusoid import FixedSinusoidTasks, SinusoidParams, SinusoidTasks, sinusoid

__all__ = [
    "Episode",
    "EpisodeBatch",
    "EpisodeIndices",
    "EpisodeSampler",
    "FixedEpisodes",
    "FixedSinusoidTasks",
    "SinusoidParams",
    "SinusoidTasks",
    "sinusoid",
]
