"""The dataset manifest (the commit marker, written last), the wids index, and reading a dataset by URL.

A dataset URL names the dataset's prefix: ``s3://BUCKET/PREFIX/datasets/NAME``, ``file:///DIR/datasets/NAME``,
a plain directory (e.g. a pulled copy), or any of these ending in ``/manifest.json``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import platform
from pathlib import Path
from typing import Any, BinaryIO

from cleftgan_hpc.errors import CleftGanError, ObjectNotFound
from cleftgan_hpc.storage.base import ObjectStore, join_key, write_file_atomically

FORMAT = "cleftgan-hpc-dataset"
VERSION = 1


class DatasetError(CleftGanError):
    """A dataset is missing, uncommitted, conflicting or corrupt."""


def software_versions() -> dict[str, str]:
    import numpy
    import PIL

    from cleftgan_hpc import __version__

    versions = {"cleftgan_hpc": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
                "pillow": PIL.__version__}
    with contextlib.suppress(ImportError):
        import torch

        versions["torch"] = torch.__version__
    return versions


def build_manifest(
    name: str, prefix: str, options: dict[str, Any], options_sha256: str, network: dict[str, Any],
    shards: list[dict[str, Any]], extension: str,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "name": name,
        "prefix": prefix,
        "count": sum(s["samples"] for s in shards),
        "extension": extension,
        "shards": shards,
        "network": network,
        "options": options,
        "options_sha256": options_sha256,
        "software": software_versions(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wids_index": "wids-index.json",
    }


def wids_index(name: str, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The shard list in the ``wids`` index format; URLs are relative to the index's own location."""
    return {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": name,
        "shardlist": [{"url": s["name"], "nsamples": s["samples"], "filesize": s["bytes"]} for s in shards],
    }


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{where} is not a cleftgan-hpc dataset manifest")
    if manifest.get("version") != VERSION:
        raise DatasetError(f"{where} has manifest version {manifest.get('version')}; this version reads {VERSION}")
    return manifest


# -- reading a dataset wherever it is ---------------------------------------------------------


class DatasetSource:
    """Read access to one dataset's files (shards, manifest) by name."""

    url: str

    def open(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def download(self, name: str, dest: Path) -> str:
        """Copy ``name`` to ``dest`` atomically; return the sha256 of the bytes copied."""
        with self.open(name) as src:
            sha, _ = write_file_atomically(src, dest)
        return sha

    def uri(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"

    def manifest(self) -> dict[str, Any]:
        """The manifest; a DatasetError naming the problem when there is none (not committed)."""
        try:
            with self.open("manifest.json") as f:
                data = json.load(f)
        except (ObjectNotFound, FileNotFoundError):
            raise DatasetError(
                f"no manifest.json at {self.url}: the dataset is not committed (synthesis still running, "
                "killed, or the URL is wrong); finish it with the synthesize stage's commit step"
            ) from None
        except ValueError as e:
            raise DatasetError(f"{self.uri('manifest.json')} is not valid JSON: {e}") from e
        return check_manifest(data, self.uri("manifest.json"))


class StoreSource(DatasetSource):
    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store, self.prefix = store, prefix.strip("/")
        self.url = store.uri(self.prefix) if self.prefix else store.url

    def open(self, name: str) -> BinaryIO:
        return self.store.open_read(join_key(self.prefix, name))


class DirSource(DatasetSource):
    """A dataset as plain files in a directory: a file:// store's dataset prefix or a pulled copy."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = "file://" + str(self.path)

    def open(self, name: str) -> BinaryIO:
        try:
            return open(self.path / name, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.uri(name)} does not exist") from None

    def download(self, name: str, dest: Path) -> str:
        if not (self.path / name).is_file():
            raise ObjectNotFound(f"{self.uri(name)} does not exist")
        return super().download(name, dest)


def open_source(url: str, endpoint_url: str | None = None) -> DatasetSource:
    """The dataset at ``url`` (s3://, file:// or a directory; a trailing /manifest.json is allowed)."""
    url = url.rstrip("/")
    if url.endswith("/manifest.json"):
        url = url[: -len("/manifest.json")]
    if url.startswith("s3://"):
        from cleftgan_hpc.spec.models import StoreConfig
        from cleftgan_hpc.storage import open_store

        bucket, _, prefix = url[5:].partition("/")
        try:
            cfg = StoreConfig(url=f"s3://{bucket}", endpoint_url=endpoint_url)
        except ValueError as e:
            raise DatasetError(f"bad dataset URL {url!r}: {e}") from None
        return StoreSource(open_store(cfg), prefix)
    if "://" in url and not url.startswith("file://"):
        raise DatasetError(f"unsupported dataset URL {url!r}: expected s3://..., file://... or a directory")
    path = Path(url[len("file://"):] if url.startswith("file://") else url).expanduser().absolute()
    if not path.is_dir():
        raise DatasetError(f"no dataset directory at {path}")
    return DirSource(path)
