"""The severity index: cleft faces scored by normalising them with a generator of normal faces
(GAN inversion into W+, model adaptation, colour transform, difference, erosion, heat map,
score), the image sources it scores, the real-set score cache, and its pictures.

Modules: ``scorer`` (the index), ``project`` (inversion), ``adapt`` (model adaptation),
``losses`` (the image distances), ``heatmap`` (colour, difference, erosion, score), ``sources``
(dataset zip, network and seeds, synthesized dataset), ``cache`` (real-set scores),
``pictures`` (overlays and the summary plot). Names are imported lazily: importing the package
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import ScoreCache
    from .scorer import COLUMNS, IndexResult, SeverityIndex

_LAZY = {"ScoreCache": "cache", "COLUMNS": "scorer", "IndexResult": "scorer", "SeverityIndex": "scorer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["COLUMNS", "IndexResult", "ScoreCache", "SeverityIndex"]
