"""Every registered choice, imported once: datasets (images and text), task kinds, models, samplers.

Registration happens when a module is imported; the stages and `mixcd ls` import this module so
that every registry is complete, while no library module has to import a module above it for its
side effects.
"""

from __future__ import annotations

from . import data, models, objectives, samplers, sources, text
from .generation import data as generation_data
from .generation import dictd
from .models import BACKBONES
from .objectives import OBJECTIVES
from .samplers import SAMPLERS
from .sources import DATASETS

__all__ = ["BACKBONES", "DATASETS", "OBJECTIVES", "SAMPLERS", "data", "dictd", "generation_data", "models",
           "objectives", "samplers", "sources", "text"]
