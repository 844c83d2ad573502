"""Device batches -> encoding processes -> tar files -> concurrent uploads, all overlapping.

    main thread    generate batch b on the device, hand its pixels to the encoding pool
    writer thread  take encoded batches in order, append them to the shard's tar in scratch,
                   and when a shard is full hand the file to the upload pool
    upload pool    put each finished shard create-only, then delete the local file

Every hand-over is bounded (``max_pending`` batches between generator and writer, at most
``upload_concurrency`` shards uploading plus one being written), so memory and scratch use
stay flat however many images are asked for; a slow stage blocks the ones before it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cleftgan_hpc.errors import CleftGanError, ObjectExists
from cleftgan_hpc.storage.base import ObjectStore, join_key
from cleftgan_hpc.synthesis.encode import die_with_parent, encode_batch
from cleftgan_hpc.synthesis.generate import class_for_seed, generate_batch
from cleftgan_hpc.synthesis.layout import FORMAT_EXT, Shard, batches, sample_key
from cleftgan_hpc.synthesis.shards import ShardWriter


@dataclass(frozen=True)
class Recipe:
    """How to make and store a dataset's images (what the manifest calls options, plus plumbing)."""

    prefix: str  # the dataset's prefix in the store
    options_sha256: str
    network_sha256: str
    truncation_psi: float
    truncation_cutoff: int | None
    labels: int | str | list[float] | None
    fmt: str
    quality: int | None
    resize: int | None
    batch: int

    @property
    def ext(self) -> str:
        return FORMAT_EXT[self.fmt]

    def shard_metadata(self, shard: Shard) -> dict[str, str]:
        """User metadata on a shard object: lets a re-run check a shard with one HEAD."""
        return {"options": self.options_sha256[:32], "samples": str(shard.count),
                "seeds": f"{shard.first_seed}-{shard.last_seed}"}


def shard_record(shard: Shard, size: int, sha256: str) -> dict[str, Any]:
    """A shard's entry in the manifest."""
    return {"name": shard.name, "samples": shard.count, "bytes": size, "sha256": sha256,
            "seeds": [shard.first_seed, shard.last_seed]}


def make_encode_pool(workers: int) -> Executor | None:
    # spawn, not fork: the parent holds torch's thread pools and boto3's threads
    if workers <= 0:
        return None
    # and die_with_parent: a SIGKILLed synthesize must not leave its encoders behind
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))


class _Done:
    """A finished future for inline encoding (workers == 0)."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def result(self) -> Any:
        return self._value


@dataclass
class _Batch:
    shard: Shard
    seeds: list[int]
    classes: list[int | None]
    parts: list[Any]  # futures (or _Done) of encode_batch, in order


class Pipeline:
    """Produce the given shards into the store. ``run()`` returns their manifest records."""

    def __init__(
        self, g: Any, recipe: Recipe, store: ObjectStore, scratch: Path, *, device: str = "cpu",
        workers: int = 0, upload_concurrency: int = 8, max_pending: int | None = None,
        log: logging.Logger | None = None, should_stop: Callable[[], bool] = lambda: False,
        on_images: Callable[[int], None] = lambda n: None, encode_pool: Executor | None = None,
    ) -> None:
        self.g, self.recipe, self.store, self.device = g, recipe, store, device
        self.scratch = scratch
        self.workers = workers
        self.upload_concurrency = upload_concurrency
        self.max_pending = max_pending or max(4, 2 * workers)
        self.log = log or logging.getLogger(__name__)
        self.should_stop, self.on_images = should_stop, on_images
        self._external_pool = encode_pool
        self._queue: queue.Queue[_Batch | None] = queue.Queue(self.max_pending)
        self._upload_slots = threading.Semaphore(upload_concurrency + 1)
        self._uploads: list[Future[dict[str, Any]]] = []
        self._error: BaseException | None = None
        self._abort = threading.Event()  # the run failed: the writer drops what is left
        self.stopped = False

    # -- the writer thread ----------------------------------------------------------------------
    def _write(self, uploader: ThreadPoolExecutor) -> None:
        writer: ShardWriter | None = None
        try:
            while (item := self._queue.get()) is not None and not self._abort.is_set():
                if writer is None:
                    self._upload_slots.acquire()  # bounds shards on scratch: writing + uploading
                    writer = ShardWriter(self.scratch / (item.shard.name + ".part"))
                encoded = [pair for part in item.parts for pair in part.result()]
                for seed, cls, (data, sha) in zip(item.seeds, item.classes, encoded, strict=True):
                    writer.add(sample_key(seed), self.recipe.ext, data, {
                        "seed": seed, "class": cls, "truncation_psi": self.recipe.truncation_psi,
                        "truncation_cutoff": self.recipe.truncation_cutoff, "sha256": sha,
                        "network_sha256": self.recipe.network_sha256,
                    })
                self.on_images(len(item.seeds))
                if writer.samples == item.shard.count:
                    writer.close()
                    self._uploads.append(uploader.submit(self._upload, item.shard, writer.path))
                    writer = None
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self._error = e
            with contextlib.suppress(queue.Empty):  # unblock a producer waiting on a full queue
                while True:
                    self._queue.get_nowait()
        finally:
            if writer is not None:  # stopped mid-shard: the partial tar is never uploaded
                writer.abort()
                self._upload_slots.release()

    def _upload(self, shard: Shard, path: Path) -> dict[str, Any]:
        try:
            key = join_key(self.recipe.prefix, shard.name)
            try:
                info = self.store.put_file(key, path, if_absent=True, metadata=self.recipe.shard_metadata(shard))
            except ObjectExists:
                # another task (or the commit step) made it meanwhile: it must be the same bytes
                from cleftgan_hpc.storage.base import sha256_file

                info = self.store.head(key)
                if info is None or info.sha256 != sha256_file(path):
                    raise CleftGanError(
                        f"{self.store.uri(key)} exists with other bytes than this recipe makes; "
                        "two runs with different options write to the same dataset"
                    ) from None
                if info.metadata != self.recipe.shard_metadata(shard):  # lost with a killed put: restore
                    info = self.store.put_file(key, path, metadata=self.recipe.shard_metadata(shard))
            self.log.info(f"uploaded {shard.name} ({shard.count} images, {info.size / 1e6:.1f} MB)")
            return shard_record(shard, info.size, str(info.sha256))
        finally:
            path.unlink(missing_ok=True)
            self._upload_slots.release()

    # -- the producer (this thread) -----------------------------------------------------------
    def _put(self, item: _Batch | None) -> None:
        while True:
            if self._error is not None:
                raise self._error
            for f in self._uploads:  # a failed upload stops the run now, not at the end
                if f.done() and f.exception() is not None:
                    raise f.exception()  # type: ignore[misc]
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _encode(self, pool: Executor | None, images: np.ndarray) -> list[Any]:
        r = self.recipe
        if pool is None:
            return [_Done(encode_batch(images, r.fmt, r.quality, r.resize))]
        chunks = np.array_split(images, min(len(images), max(self.workers, 1)))  # one chunk per worker
        return [pool.submit(encode_batch, c, r.fmt, r.quality, r.resize) for c in chunks]

    def run(self, shards: list[Shard]) -> list[dict[str, Any]]:
        r = self.recipe
        self.scratch.mkdir(parents=True, exist_ok=True)
        pool = self._external_pool if self._external_pool is not None else make_encode_pool(self.workers)
        uploader = ThreadPoolExecutor(self.upload_concurrency, thread_name_prefix="upload")
        writer = threading.Thread(target=self._write, args=(uploader,), name="shard-writer", daemon=True)
        writer.start()
        finished = False
        try:
            for shard in shards:
                if self.stopped:
                    break
                for seeds in batches(shard, r.batch):
                    if self.should_stop():  # the shard being written is dropped; finished ones upload
                        self.stopped = True
                        break
                    classes = [class_for_seed(s, r.labels, self.g.c_dim) for s in seeds]
                    images = generate_batch(self.g, seeds, classes, r.truncation_psi, r.truncation_cutoff,
                                            self.device)  # [N, H, W, C] uint8
                    self._put(_Batch(shard, seeds, classes, self._encode(pool, images)))
            finished = True
        finally:
            self._end_writer(graceful=finished)
            writer.join()
            # a failed run does not start the uploads still queued (the store is kept as it is; a re-run
            # makes what is missing)
            uploader.shutdown(wait=True, cancel_futures=self._abort.is_set())
            if pool is not None and pool is not self._external_pool:
                pool.shutdown(wait=True, cancel_futures=True)
        if self._error is not None:
            raise self._error
        for f in self._uploads:  # the first real failure, not the cancellations it caused
            if not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
        return [f.result() for f in self._uploads]

    def _end_writer(self, graceful: bool) -> None:
        """Hand the writer its end marker, whatever happened: without it writer.join() waits forever."""
        if graceful:
            try:
                self._put(None)  # the batches queued are written and uploaded first
                return
            except BaseException:  # noqa: BLE001 - an upload failed: raised by run() once all has stopped
                pass
        self._abort.set()
        with contextlib.suppress(queue.Empty):  # make room: this thread is the only one that puts
            while True:
                self._queue.get_nowait()
        self._queue.put(None)
