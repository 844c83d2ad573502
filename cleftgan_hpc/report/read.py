"""Reading a run's objects for the report: every failure becomes a note the page shows, never an error.

A report is most wanted when something went wrong, so a missing, damaged or unreadable object
costs only its own part of the page: ``Reader`` returns None for it and records why.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from typing import Any

from cleftgan_hpc.errors import ObjectNotFound, StorageError
from cleftgan_hpc.storage.base import ObjectInfo, ObjectStore

MAX_READ = 64 << 20  # a JSON record or plot larger than this is not a record or plot of ours
MAX_EMBED = 1 << 20  # an image up to this size that needs no scaling goes in as it is


@dataclass(frozen=True)
class Picture:
    """An image ready for the page: a data: URI of a (scaled) copy, its size, and the original's key."""

    uri: str
    width: int
    height: int
    key: str


@dataclass
class Reader:
    """Reads objects of one store; ``notes`` collects what could not be read, key by key."""

    store: ObjectStore
    notes: list[tuple[str, str]] = field(default_factory=list)  # (key, "missing" | "damaged: ..." | "unreadable: ...")

    def note(self, key: str, what: str) -> None:
        if (key, what) not in self.notes:
            self.notes.append((key, what))

    def take_notes(self) -> list[tuple[str, str]]:
        notes, self.notes = self.notes, []
        return notes

    def bytes(self, key: str, *, limit: int = MAX_READ) -> bytes | None:
        try:
            with self.store.open_read(key) as f:
                data = f.read(limit + 1)
        except ObjectNotFound:
            self.note(key, "missing")
            return None
        except (StorageError, OSError) as exc:
            self.note(key, f"unreadable: {exc}")
            return None
        if len(data) > limit:
            self.note(key, f"damaged: larger than {limit >> 20} MiB, not read")
            return None
        return data

    def text(self, key: str, *, limit: int = MAX_READ) -> str | None:
        data = self.bytes(key, limit=limit)
        return None if data is None else data.decode("utf-8", errors="replace")

    def json(self, key: str, kind: type = dict) -> Any:
        """The JSON value at ``key`` if it is a ``kind`` (dict or list), else None and a note."""
        data = self.bytes(key)
        if data is None:
            return None
        try:
            value = json.loads(data)
        except (ValueError, RecursionError) as exc:
            self.note(key, f"damaged: not JSON ({str(exc)[:80]})")
            return None
        if not isinstance(value, kind):
            self.note(key, f"damaged: not a JSON {'object' if kind is dict else 'list'}")
            return None
        return value

    def jsonl(self, key: str) -> list[dict[str, Any]] | None:
        """The records of a JSON-lines file; damaged lines are skipped and noted."""
        text = self.text(key)
        if text is None:
            return None
        out, bad = [], 0
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                rec = None
            if isinstance(rec, dict):
                out.append(rec)
            elif line.strip():
                bad += 1
        if bad:
            self.note(key, f"damaged: {bad} line(s) are not JSON records, skipped")
        return out

    def exists(self, key: str) -> bool:
        try:
            return self.store.exists(key)
        except (StorageError, OSError) as exc:
            self.note(key, f"unreadable: {exc}")
            return False

    def list(self, prefix: str) -> list[ObjectInfo]:
        try:
            return list(self.store.list(prefix))
        except (StorageError, OSError) as exc:
            self.note(prefix, f"unreadable: {exc}")
            return []

    def picture(self, key: str, max_side: int = 1100, *, photo: bool = False) -> Picture | None:
        """The image at ``key`` as a data: URI, scaled to at most ``max_side`` pixels (JPEG for photos
        and sample grids, PNG for plots); None and a note when it is not a readable image."""
        data = self.bytes(key)
        return None if data is None else self.picture_of(data, key, max_side, photo=photo)

    def picture_of(self, data: bytes, key: str, max_side: int = 1100, *, photo: bool = False) -> Picture | None:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()  # decodes every byte: a truncated file fails here, not in the browser
                if max(im.size) <= max_side and im.format == "PNG" and len(data) <= MAX_EMBED:
                    return Picture(data_uri(data, "image/png"), im.width, im.height, key)
                im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
                return encode(im, key, photo=photo)
        except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds on damaged input
            self.note(key, f"damaged: not a readable image ({type(exc).__name__})")
            return None


def encode(im: Any, key: str, *, photo: bool) -> Picture:
    """A PIL image as a data: URI picture."""
    buf = io.BytesIO()
    if photo:
        im.convert("RGB").save(buf, format="JPEG", quality=85)
        mime = "image/jpeg"
    else:
        im.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    return Picture(data_uri(buf.getvalue(), mime), im.width, im.height, key)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
