"""The training dataset: a zip of PNGs in the StyleGAN (dataset_tool) reference format.

Layout: ``00000/img00000000.png`` ... (1000 images per folder) and ``dataset.json`` with
``{"labels": [["00000/img00000000.png", label], ...]}`` or ``{"labels": null}``; a label is
an int (class) or a list of floats / a float.

The archive is byte-identical for identical input, so re-running a stage reproduces it and
its sha256 can identify it: entries in sorted order with dataset.json last, a fixed timestamp
(1980-01-01, the zip epoch), fixed attributes, stored (PNG is already deflated), and PNGs
written with fixed encoder settings and no metadata chunks.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cleftgan_hpc.errors import DataError

IMAGES_PER_FOLDER = 1000
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
PNG_COMPRESS_LEVEL = 6

Label = int | float | list[float]


def archive_name(index: int) -> str:
    return f"{index // IMAGES_PER_FOLDER:05d}/img{index:08d}.png"


def encode_png(image: Image.Image | np.ndarray) -> bytes:
    """Deterministic PNG bytes (fixed zlib level, no optimize pass, no text/time chunks)."""
    im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def _zipinfo(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3  # Unix, whatever machine wrote it
    info.external_attr = 0o100644 << 16
    return info


class DatasetWriter:
    """Writes the dataset zip to a temp file, renamed into place on ``close`` (atomic).

    Images must be added in their final order; ``add_png`` takes already-encoded PNG bytes
    (workers encode in parallel with ``encode_png``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_STORED)
        self.names: list[str] = []
        self._shape: tuple[int, int, str] | None = None

    def add_png(self, png: bytes) -> str:
        with Image.open(io.BytesIO(png)) as im:
            shape = (im.width, im.height, im.mode)
        if shape[0] != shape[1] or shape[2] not in ("RGB", "L"):
            raise DataError(f"dataset images must be square RGB or L, got {shape[0]}x{shape[1]} {shape[2]}")
        if self._shape is not None and shape != self._shape:
            raise DataError(f"dataset image {len(self.names)} is {shape}, earlier ones are {self._shape}")
        self._shape = shape
        name = archive_name(len(self.names))
        self._zip.writestr(_zipinfo(name), png)
        self.names.append(name)
        return name

    def add(self, image: Image.Image | np.ndarray) -> str:
        return self.add_png(encode_png(image))

    def close(self, labels: Sequence[Label] | None = None) -> Path:
        """Write dataset.json (labels in image order, or null) and publish the archive."""
        if labels is not None and len(labels) != len(self.names):
            raise DataError(f"{len(labels)} labels for {len(self.names)} images")
        doc = {"labels": None if labels is None else [[n, _plain(v)] for n, v in zip(self.names, labels, strict=True)]}
        self._zip.writestr(_zipinfo("dataset.json"), json.dumps(doc, separators=(",", ":")).encode())
        self._zip.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._zip.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.abort()


def _plain(v: Any) -> Any:
    """JSON-native label (numpy scalars/arrays to int, float or list)."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def write_dataset(
    path: str | Path, images: Sequence[Image.Image | np.ndarray], labels: Sequence[Label] | None = None
) -> Path:
    """Write ``images`` (and their labels) as a dataset zip at ``path``."""
    with DatasetWriter(path) as w:
        for im in images:
            w.add(im)
        return w.close(labels)


class Dataset:
    """A dataset zip opened for reading. ``ds[i]`` is image i as uint8 [H, W, C].

    The zip handle opens lazily per process, so a Dataset pickles into DataLoader workers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        try:
            zf = self._file()
            names = sorted(n for n in zf.namelist() if n.lower().endswith(".png"))
            meta = json.loads(zf.read("dataset.json")) if "dataset.json" in zf.namelist() else {"labels": None}
        except (OSError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"dataset {self.path}: not a readable dataset zip: {exc}") from None
        if not names:
            raise DataError(f"dataset {self.path}: contains no PNG images")
        self.names = names
        first = self[0]
        self.resolution = int(first.shape[0])
        self.channels = int(first.shape[2])
        if first.shape[0] != first.shape[1]:
            h, w = first.shape[:2]
            raise DataError(f"dataset {self.path}: images must be square, {names[0]} is {w}x{h}")
        self.labels = self._labels(meta.get("labels") if isinstance(meta, dict) else None)

    def _labels(self, raw: Any) -> np.ndarray | None:
        if raw is None:
            return None
        table = dict((str(k), v) for k, v in raw)
        missing = [n for n in self.names if n not in table]
        if missing:
            raise DataError(f"dataset {self.path}: dataset.json has no label for {missing[0]} ({len(missing)} missing)")
        values = [table[n] for n in self.names]
        arr = np.array(values)
        if arr.dtype.kind in "iu" or (arr.dtype.kind == "b"):
            return arr.astype(np.int64)
        if arr.dtype.kind == "f":
            return arr.astype(np.float32)
        raise DataError(f"dataset {self.path}: labels must be numbers or lists of numbers")

    def _file(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        return self._zip

    def __len__(self) -> int:
        return len(self.names)

    @property
    def count(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> np.ndarray:
        with Image.open(io.BytesIO(self._file().read(self.names[index]))) as im:
            a = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "L") else im)
        return a[..., None] if a.ndim == 2 else a  # [H, W, C] uint8

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def array(self, layout: str = "NHWC") -> np.ndarray:
        """Every image in one uint8 array, [N, H, W, C] or (layout='NCHW') [N, C, H, W]."""
        a = np.stack(list(self))
        return a.transpose(0, 3, 1, 2) if layout == "NCHW" else a

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_zip": None}


def open_dataset(path: str | Path) -> Dataset:
    """Open a dataset zip: ``.count``, ``.resolution``, ``.channels``, ``.labels`` (int64 [N],
    float32 [N] or [N, D], or None), ``ds[i]`` -> uint8 [H, W, C]."""
    return Dataset(path)
