"""Episodes, episode samplers and task families."""

from .episode import Episode, EpisodeBatch
from .sampler import EpisodeIndices, EpisodeSampler, FixedEpisodes

__all__ = ["Episode", "EpisodeBatch", "EpisodeIndices", "EpisodeSampler", "FixedEpisodes"]
