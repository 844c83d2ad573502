"""``max_images`` against the dataset's size, where the spec already tells the size.

A fine-tune (or a sweep's base) asking for more images than its dataset has is refused at
validate time when the size is knowable from the spec alone:

- the dataset is a local dataset zip: its PNG entries are counted (the zip's directory only);
- it is a ``preprocess`` of a ``demo_data`` stage: at most that stage's ``count`` faces;
- it is a ``preprocess`` of a local folder of photos: at most the photos in it.

A preprocess may reject photos, so the last two are upper bounds: asking for more than them is
certainly wrong; asking for fewer may still be too many, which the stage finds before it trains.
Datasets in the store, or made by other stages, are checked only then.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cleftgan_hpc.jobspec.kinds.demo_data import DemoDataStage
from cleftgan_hpc.jobspec.models import stage_ref

Loc = tuple[str | int, ...]
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp"})
"""What preprocess reads from a folder (as data/images.py's IMAGE_SUFFIXES; a test keeps them equal)."""
MAX_ENTRIES_SCANNED = 200_000
"""A folder of photos is walked at most this far at validate time; past it the size is left unknown."""


def check_max_images(data: Any, problem: Callable[[Loc, str], None], base_dir: Path) -> None:
    """Report every max_images that is larger than what its dataset can hold."""
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict):
        return
    for name, stage in stages.items():
        if not isinstance(stage, dict):
            continue
        if stage.get("kind") == "finetune":
            value, loc = stage.get("max_images"), ("stages", name, "max_images")
        elif stage.get("kind") == "sweep" and isinstance(stage.get("base"), dict):
            value, loc = stage["base"].get("max_images"), ("stages", name, "base", "max_images")
        else:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            continue  # absent, null or not a count: the model reports what is wrong with it
        dataset = stage.get("dataset")
        bound = dataset_bound(dataset, stages, base_dir, value) if isinstance(dataset, str) else None
        if bound is not None and value > bound[0]:
            size, what = bound
            problem(loc, f"max_images {value} is more than the {size} images {what}; use at most {size}, "
                         "or null for all of them")


def dataset_bound(dataset: str, stages: dict[str, Any], base_dir: Path, wanted: int) -> tuple[int, str] | None:
    """(the most images the dataset can hold, what says so) or None when the spec cannot tell.
    ``wanted``: counting a folder stops once it has found that many (enough to know it fits)."""
    ref = stage_ref(dataset)
    if ref is None:
        if dataset.startswith("store:"):
            return None
        count = _zip_images(_local(dataset, base_dir))
        return (count, f"of the dataset {dataset}") if count is not None else None
    source = stages.get(ref[0])
    if not isinstance(source, dict) or source.get("kind") != "preprocess" or ref[1] not in (None, "dataset"):
        return None
    images = source.get("images")
    if not isinstance(images, str):
        return None
    photos = stage_ref(images)
    if photos is not None:
        faces = stages.get(photos[0])
        if not isinstance(faces, dict) or faces.get("kind") != "demo_data" or photos[1] not in (None, "images"):
            return None
        count = faces.get("count", DemoDataStage.model_fields["count"].default)
        if not isinstance(count, int) or isinstance(count, bool):
            return None
        return count, f"that stage {ref[0]!r} can make from the {count} faces of demo_data stage {photos[0]!r}"
    if images.startswith("store:"):
        return None
    count = _photos(_local(images, base_dir), wanted)
    if count is None or count >= wanted:
        return None
    return count, f"that stage {ref[0]!r} can make from the {count} photos in {images}"


def _local(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _zip_images(path: Path) -> int | None:
    """PNG entries of a dataset zip (as the dataset reader counts them), or None if unreadable."""
    try:
        if not path.is_file():
            return None
        with zipfile.ZipFile(path) as zf:
            return sum(1 for n in zf.namelist() if n.lower().endswith(".png"))
    except (OSError, zipfile.BadZipFile, ValueError):
        return None


def _photos(folder: Path, enough: int) -> int | None:
    """Photos under ``folder`` (recursively), counted until ``enough`` are found; None when it is
    not a folder here or too large to walk at validate time."""
    if not folder.is_dir():
        return None
    count = scanned = 0
    for _root, _dirs, files in os.walk(folder):
        scanned += len(files) + len(_dirs)
        count += sum(1 for f in files if os.path.splitext(f)[1].lower() in PHOTO_SUFFIXES)
        if count >= enough:
            return count
        if scanned > MAX_ENTRIES_SCANNED:
            return None
    return count
