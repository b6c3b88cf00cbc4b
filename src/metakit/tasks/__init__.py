"""Episodes, episode samplers and task families."""

from .episode import Episode, EpisodeBatch

__all__ = ["Episode", "EpisodeBatch"]
