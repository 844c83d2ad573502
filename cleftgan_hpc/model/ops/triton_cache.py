"""A Triton cache manager for images: compiled kernels come from the image's prebuilt cache
(read-only in an Apptainer SIF) when they are there, anything else from the writable cache.

The images set ``TRITON_CACHE_MANAGER=cleftgan_hpc.model.ops.triton_cache:PrebuiltFirstCache``
and ``CLEFTGAN_TRITON_PREBUILT=/opt/triton-cache`` (filled at build time by
``python -m cleftgan_hpc.model.ops.warm`` where the build sees a GPU). Triton keys each cache
entry by the kernel's source, its specialisation, the GPU architecture and the Triton version,
so an entry from the image is used exactly where it is valid; a miss (another GPU architecture)
compiles into ``TRITON_CACHE_DIR`` (Triton's default: ~/.triton/cache), once per node or home.
"""

from __future__ import annotations

import os

from triton.runtime.cache import FileCacheManager

PREBUILT_ENV = "CLEFTGAN_TRITON_PREBUILT"


class PrebuiltFirstCache(FileCacheManager):
    """FileCacheManager reading an entry from $CLEFTGAN_TRITON_PREBUILT/KEY when that exists
    (writing there only if it is writable, else into TRITON_CACHE_DIR); otherwise the ordinary
    cache in TRITON_CACHE_DIR."""

    def __init__(self, key: str, override: bool = False, dump: bool = False) -> None:
        prebuilt = os.environ.get(PREBUILT_ENV)
        entry = os.path.join(prebuilt, key) if prebuilt else None
        self._writable: FileCacheManager | None = None
        if entry and not (override or dump) and os.path.isdir(entry):
            self.key, self.cache_dir, self.lock_path = key, entry, os.path.join(entry, "lock")
            self._readonly = not os.access(entry, os.W_OK)
        else:
            super().__init__(key, override=override, dump=dump)
            self._readonly = False

    def _target(self) -> FileCacheManager | None:
        if not self._readonly:
            return None
        if self._writable is None:
            self._writable = FileCacheManager(self.key)
        return self._writable

    def put(self, data, filename: str, binary: bool = True) -> str:  # noqa: ANN001 - as Triton's
        target = self._target()
        return target.put(data, filename, binary) if target else super().put(data, filename, binary)

    def put_group(self, filename: str, group: dict[str, str]) -> str:
        target = self._target()
        return target.put_group(filename, group) if target else super().put_group(filename, group)
