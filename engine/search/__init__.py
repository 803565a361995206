"""Searched per-layer plans (EvoPress): the evolution over levels, the level database and its fitness."""
from .evolution import (Generation, LevelSpace, Sample, SearchResult, SearchSettings, Stage, evolve, level_space,
                        mutate)

__all__ = ["Generation", "LevelSpace", "Sample", "SearchResult", "SearchSettings", "Stage", "evolve", "level_space",
           "mutate"]
