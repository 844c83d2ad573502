"""TensorBoard event files of a fine-tune: scalars at each tick, metrics and the sample grid at each snapshot.

    <stage>/tensorboard/events.out.tfevents.<images shown at start>.<host>.<pid>    one file per attempt

Each attempt writes its own file in scratch and puts it (create-or-replace) into the store at
every checkpoint, after the checkpoint: the stored events of an attempt end at a checkpoint, and
the next attempt resumes after that checkpoint, so no step is written twice (a kill between the
checkpoint and the upload loses a few ticks of events, never duplicates them). Steps are images
shown (kimg x 1000). Only rank 0 writes.

The format is written here (TFRecord framing of a few fields of TensorFlow's ``Event``
protocol buffer), so training needs neither TensorFlow nor TensorBoard; TensorBoard's own
reader reads these files (tests/training/test_tensorboard.py).
"""

from __future__ import annotations

import io
import logging
import os
import socket
import struct
import time
from pathlib import Path

from cleftgan_hpc.errors import StorageError
from cleftgan_hpc.storage.base import ObjectStore, join_key

FILE_PREFIX = "events.out.tfevents."
LAST_STEP = "last_step"  # object metadata of an uploaded file: the last step it holds
MAX_IMAGE_SIDE = 1024  # a 1024 px grid of 16 images is 4096 px: TensorBoard shows it smaller anyway

# the names StyleGAN users know from the reference's TensorBoard logs
SCALAR_TAGS = {
    "loss_G": "Loss/G/loss",
    "loss_D": "Loss/D/loss",
    "scores_real": "Loss/scores/real",
    "scores_fake": "Loss/scores/fake",
    "r1_penalty": "Loss/r1_penalty",
    "pl_penalty": "Loss/pl_penalty",
    "augment_p": "Progress/augment",
}


# -- the wire format ---------------------------------------------------------------------------

def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), which TFRecord framing uses (zlib's CRC-32 is another polynomial)."""
    crc, table = 0xFFFFFFFF, _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the bytes, their masked CRC."""
    length = struct.pack("<Q", len(data))
    return length + _masked(length) + data + _masked(data)


def records(data: bytes) -> list[bytes]:
    """The records of a file this module wrote (a torn last record is dropped)."""
    out, pos = [], 0
    while pos + 12 <= len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        if pos + 16 + n > len(data):
            break
        out.append(data[pos + 12 : pos + 12 + n])
        pos += 16 + n
    return out


def event_step(data: bytes) -> int:
    """The step (field 2) of an encoded ``Event``; 0 when it has none."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while pos < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
            if number == 2:
                return value - (1 << 64) if value >> 63 else value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            pos += varint()
        elif wire == 5:
            pos += 4
        else:
            break
    return 0


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 fields: negatives as two's complement
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def event(wall_time: float, step: int, *, summary: bytes | None = None, file_version: str | None = None) -> bytes:
    """An ``Event``: wall_time (1, double), step (2, int64), file_version (3) or summary (5)."""
    out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if summary is not None:
        out += _bytes_field(5, summary)
    return out


def scalar_value(tag: str, value: float) -> bytes:
    """A ``Summary.Value`` with tag (1) and simple_value (2, float)."""
    return _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", value)))


def image_value(tag: str, png: bytes, width: int, height: int, channels: int) -> bytes:
    """A ``Summary.Value`` with tag (1) and image (4): height, width, colorspace, encoded PNG."""
    image = (_field(1, 0, _varint(height)) + _field(2, 0, _varint(width)) + _field(3, 0, _varint(channels))
             + _bytes_field(4, png))
    return _bytes_field(1, _bytes_field(1, tag.encode()) + _bytes_field(4, image))


# -- the training log --------------------------------------------------------------------------

class TrainingEvents:
    """The event file of one training attempt (rank 0), uploaded under ``<stage>/tensorboard/``."""

    def __init__(self, store: ObjectStore, prefix: str, scratch: Path, start_nimg: int,
                 log: logging.Logger | None = None) -> None:
        self.store, self.prefix, self.log = store, prefix, log
        name = f"{FILE_PREFIX}{start_nimg:09d}.{socket.gethostname()}.{os.getpid()}"
        self.key = join_key(prefix, name)
        scratch.mkdir(parents=True, exist_ok=True)
        self.path = scratch / name
        self._failed = False
        try:
            self._drop_discarded(start_nimg)
        except (StorageError, OSError) as exc:
            self._warn(f"could not check the stored TensorBoard events under {store.uri(prefix)}: {exc}")
        self.path.write_bytes(b"")  # a leftover of an earlier process with this pid starts over
        self._write(event(time.time(), 0, file_version="brain.Event:2"))
        self._last = (time.monotonic(), start_nimg)
        self._last_step = start_nimg

    def _warn(self, message: str) -> None:
        if self.log is not None and not self._failed:
            self.log.warning(message)
        self._failed = True

    def _drop_discarded(self, start_nimg: int) -> None:
        """Stored events past this attempt's start step belong to a discarded trajectory (a sweep
        trial restarted from an earlier checkpoint): files that begin there go, files that run
        past it are cut back. A plain resume finds none (each upload records its last step, so
        this costs a HEAD per file, no download)."""
        for info in list(self.store.list(self.prefix + "/" + FILE_PREFIX)):
            first = info.key.rsplit("/", 1)[-1][len(FILE_PREFIX):].split(".", 1)[0]
            if first.isdigit() and int(first) >= start_nimg:
                self.store.delete(info.key)
                continue
            head = self.store.head(info.key)
            last = (head.metadata if head else {}).get(LAST_STEP, "")
            if last.isdigit() and int(last) <= start_nimg:
                continue
            kept = [r for r in records(self.store.get_bytes(info.key)) if event_step(r) <= start_nimg]
            self.store.put_bytes(info.key, b"".join(record(r) for r in kept), metadata={LAST_STEP: str(start_nimg)})

    def _write(self, data: bytes) -> None:
        # opened per record (a hundred ticks a run): nothing to close however training ends
        with open(self.path, "ab") as f:
            f.write(record(data))

    def tick(self, cur_nimg: int, stats: dict[str, float]) -> None:
        """The tick's mean stats (stats.jsonl's record) and the seconds per kimg since the last tick."""
        now = time.monotonic()
        t0, n0 = self._last
        values = [scalar_value(SCALAR_TAGS.get(k, f"Stats/{k}"), v) for k, v in sorted(stats.items()) if k != "kimg"]
        if cur_nimg > n0:
            values.append(scalar_value("Timing/sec_per_kimg", (now - t0) / (cur_nimg - n0) * 1000))
        values.append(scalar_value("Progress/kimg", cur_nimg / 1000))
        self._last = (now, cur_nimg)
        self._write(event(time.time(), cur_nimg, summary=b"".join(values)))
        self._last_step = cur_nimg

    def snapshot(self, cur_nimg: int, metrics: dict[str, float], grid_png: bytes) -> None:
        """The snapshot's metrics and its sample grid (scaled down to MAX_IMAGE_SIDE)."""
        from PIL import Image

        with Image.open(io.BytesIO(grid_png)) as im:
            if max(im.size) > MAX_IMAGE_SIDE:
                im.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                grid_png = buf.getvalue()
            width, height, channels = im.width, im.height, len(im.getbands())
        values = [scalar_value(f"Metrics/{k}", v) for k, v in metrics.items()]
        values.append(image_value("Samples/grid", grid_png, width, height, channels))
        self._write(event(time.time(), cur_nimg, summary=b"".join(values)))
        self._last_step = cur_nimg

    def upload(self) -> None:
        """Put the file as written so far (at a checkpoint, after it). A failure costs the events,
        never the training: it is logged and the next checkpoint tries again."""
        try:
            self.store.put_file(self.key, self.path, metadata={LAST_STEP: str(self._last_step)})
        except (StorageError, OSError) as exc:
            self._warn(f"could not upload the TensorBoard events to {self.store.uri(self.key)}: {exc}")
