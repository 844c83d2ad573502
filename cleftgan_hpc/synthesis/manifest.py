"""The dataset manifest (the commit marker, written last), the wids index, and reading a dataset by URL.

A dataset URL names the dataset's prefix: ``s3://BUCKET/PREFIX/datasets/NAME``, ``file:///DIR/datasets/NAME``,
a plain directory (e.g. a pulled copy), or any of these ending in ``/manifest.json``.

A manifest is input from whoever made the dataset, and readers join its file names (shards, the
network, the wids index) onto a local directory. So ``check_manifest`` accepts only plain file
names: one path component of letters, digits, '.', '_' and '-', starting with a letter or digit
(no '/', '\\', '..', NUL or absolute path can pass), all distinct, none ``manifest.json``; and
shard entries whose fields have the types readers rely on. It refuses the whole manifest before
a reader has written anything.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import platform
import re
from pathlib import Path
from typing import Any, BinaryIO

from cleftgan_hpc.errors import CleftGanError, ObjectNotFound
from cleftgan_hpc.storage.base import ObjectStore, join_key, write_file_atomically

FORMAT = "cleftgan-hpc-dataset"
VERSION = 1
# the names a manifest may give its files: a single path component, so DEST / name stays in DEST
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


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


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bad_shard(entry: Any) -> str | None:
    """What is wrong with a manifest's shard entry (its name is checked separately), or None."""
    if not isinstance(entry, dict):
        return "is not an object"
    if not _count(entry.get("samples")) or not _count(entry.get("bytes")):
        return "needs non-negative integers 'samples' and 'bytes'"
    if not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
        return "needs a 'sha256' of 64 lower-case hex digits"
    seeds = entry.get("seeds")
    if not (isinstance(seeds, list) and len(seeds) == 2 and all(_count(s) for s in seeds) and seeds[0] <= seeds[1]):
        return "needs 'seeds' [first, last]"
    return None


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """``manifest`` if it is a well-formed manifest whose file names are safe to join onto a directory,
    else a DatasetError naming the first problem (checked whole, before anything is read or written)."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{where} is not a cleftgan-hpc dataset manifest")
    if manifest.get("version") != VERSION:
        raise DatasetError(f"{where} has manifest version {manifest.get('version')}; this version reads {VERSION}")
    shards, network = manifest.get("shards"), manifest.get("network")
    if not isinstance(shards, list) or not isinstance(manifest.get("options"), dict):
        raise DatasetError(f"{where} is corrupt: it needs a 'shards' list and an 'options' object")
    if network is not None and not isinstance(network, dict):
        raise DatasetError(f"{where} is corrupt: 'network' is not an object")
    names: list[tuple[str, Any]] = [(f"shards[{i}].name", s.get("name") if isinstance(s, dict) else None)
                                    for i, s in enumerate(shards)]
    if (network or {}).get("file") is not None:
        names.append(("network.file", network["file"]))  # type: ignore[index]
    if manifest.get("wids_index") is not None:
        names.append(("wids_index", manifest["wids_index"]))
    seen: set[str] = set()  # lower-cased: on a case-insensitive filesystem A.tar and a.tar are one file
    for field, name in names:
        if not isinstance(name, str) or not FILE_NAME.fullmatch(name) or name.lower() == "manifest.json":
            raise DatasetError(
                f"{where} is corrupt or unsafe: {field} {name!r:.80} is not a plain file name (one path component of "
                "letters, digits, '.', '_', '-'); refusing the whole dataset, nothing was written"
            )
        if name.lower() in seen:
            raise DatasetError(f"{where} is corrupt: {field} {name!r:.80} names a file the manifest already lists")
        seen.add(name.lower())
    for i, entry in enumerate(shards):
        if (problem := _bad_shard(entry)) is not None:
            raise DatasetError(f"{where} is corrupt: shard entry {i} ({entry.get('name')!r}) {problem}")
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
        from cleftgan_hpc.jobspec.models import StoreConfig
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
