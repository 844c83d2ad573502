"""Open the object store a StoreConfig names: file:// -> LocalStore, s3:// -> S3Store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cleftgan_hpc.errors import StorageError
from cleftgan_hpc.storage.base import ObjectStore

if TYPE_CHECKING:
    from cleftgan_hpc.jobspec.models import StoreConfig


def open_store(cfg: StoreConfig) -> ObjectStore:
    """Return the store ``cfg.url`` names. boto3 is imported only for s3:// URLs."""
    scheme, sep, rest = cfg.url.partition("://")
    if not sep:
        raise StorageError(f"unsupported store URL {cfg.url!r}: expected file://DIR or s3://BUCKET/PREFIX")
    if scheme == "file":
        from cleftgan_hpc.storage.local import LocalStore

        if not rest:
            raise StorageError("file:// needs a directory, e.g. file:///data/store")
        return LocalStore(Path(rest))
    if scheme == "s3":
        from cleftgan_hpc.storage.s3 import S3Store

        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StorageError(f"store URL {cfg.url!r} names no bucket: expected s3://BUCKET/PREFIX")
        return S3Store(
            bucket,
            prefix.strip("/"),
            endpoint_url=cfg.endpoint_url,
            region=cfg.region,
            profile=cfg.profile,
        )
    raise StorageError(f"unsupported store URL scheme {scheme!r} in {cfg.url!r}: expected file:// or s3://")
