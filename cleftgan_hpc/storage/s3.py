"""The s3:// object store (AWS S3 or any S3-compatible server: SeaweedFS, MinIO, Ceph RGW).

boto3 is imported only when an S3Store is made. Credentials are never passed in: boto3 reads
them from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), from
``profile`` in ~/.aws, or from its usual chain. ``endpoint_url`` unset means AWS (or
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL when set).

Guarantees:
- every object carries ``x-amz-meta-sha256``, the sha256 of its bytes, computed before the
  upload starts (a stream is hashed while it is read, and spooled to a temp file when it is
  larger than the multipart threshold);
- an object is visible only when complete: a single PUT, or a multipart upload that is
  aborted on any failure;
- create-only puts send ``If-None-Match: *`` on PutObject and on CompleteMultipartUpload;
  a 412 becomes ObjectExists. Servers that ignore the header on CompleteMultipartUpload
  (older S3-compatible servers) leave a window between the HEAD check before upload and the
  completion in which a concurrent creator can be overwritten; AWS S3, SeaweedFS >= 4 and
  MinIO honour it.

Tuning (constructor arguments, else environment, else defaults): multipart_threshold
(CLEFTGAN_S3_MULTIPART_THRESHOLD_MB, 64), multipart_chunksize (CLEFTGAN_S3_MULTIPART_CHUNK_MB,
16; at least 5 MiB, grown so that no upload needs more than 10,000 parts), max_concurrency
(CLEFTGAN_S3_MAX_CONCURRENCY, 8 parallel part uploads), page_size (objects per list request,
1000). AWS_MAX_ATTEMPTS sets the retry count unless ``max_attempts`` is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, cast

from cleftgan_hpc.errors import ObjectExists, ObjectNotFound, StorageError
from cleftgan_hpc.storage.base import (
    CHUNK,
    ObjectInfo,
    ObjectStore,
    check_key,
    check_metadata,
    check_prefix,
    copy_stream,
    sha256_file,
    write_file_atomically,
)

MiB = 1 << 20
MIN_PART = 5 * MiB  # S3's smallest part (except the last)
MAX_PARTS = 10_000


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise StorageError(f"{name}={raw!r} is not an integer") from None
    if value <= 0:
        raise StorageError(f"{name}={raw!r} must be positive")
    return value


class S3Store(ObjectStore):
    """An object store under ``s3://bucket/prefix``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        *,
        multipart_threshold: int | None = None,
        multipart_chunksize: int | None = None,
        max_concurrency: int | None = None,
        page_size: int = 1000,
        max_attempts: int | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ProfileNotFound

        if not bucket:
            raise StorageError("an S3 store needs a bucket name")
        prefix = prefix.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except StorageError:
                raise StorageError(f"invalid prefix {prefix!r} in s3://{bucket}/{prefix}") from None
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.multipart_threshold = multipart_threshold or _env_int("CLEFTGAN_S3_MULTIPART_THRESHOLD_MB", 64) * MiB
        self.multipart_chunksize = max(
            MIN_PART, multipart_chunksize or _env_int("CLEFTGAN_S3_MULTIPART_CHUNK_MB", 16) * MiB
        )
        self.max_concurrency = max_concurrency or _env_int("CLEFTGAN_S3_MAX_CONCURRENCY", 8)
        if not 1 <= page_size <= 1000:
            raise StorageError(f"page_size must be 1..1000, not {page_size}")
        self.page_size = page_size
        self._bucket_checked = False

        custom_endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        retries: dict[str, Any] = {"mode": "standard"}
        if max_attempts is not None:
            retries["total_max_attempts"] = max_attempts
        config = Config(
            retries=retries,  # type: ignore[arg-type]
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max(10, self.max_concurrency + 2),
            # S3-compatible servers on an IP or an internal host name need path-style URLs
            s3={"addressing_style": "path"} if custom_endpoint else None,
        )
        try:
            session = boto3.session.Session(profile_name=profile, region_name=region)
            self._client = session.client("s3", endpoint_url=endpoint_url, config=config)
        except ProfileNotFound:
            raise StorageError(
                f"AWS profile {profile!r} is not defined in ~/.aws/config or ~/.aws/credentials"
            ) from None
        except (BotoCoreError, ValueError) as e:
            raise StorageError(f"cannot set up the S3 client for {self.url}: {e}") from e
        self.endpoint_url: str = self._client.meta.endpoint_url
        self._transfer = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=self.max_concurrency,
            io_chunksize=CHUNK,
            use_threads=True,
        )

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint_url={self.endpoint_url!r})"

    # -- helpers -------------------------------------------------------------------------
    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _root(self) -> str:
        return self.prefix + "/" if self.prefix else ""

    def _fail(self, e: BaseException, action: str, key: str | None = None) -> NoReturn:
        """Raise the StorageError that explains ``e`` (a botocore error) in one line."""
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        where = self.uri(key) if key is not None else self.url
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            msg = err.get("Message") or code
            if code in ("PreconditionFailed",) or status == 412:
                raise ObjectExists(f"{where} already exists") from e
            if code == "NoSuchBucket":
                raise StorageError(f"S3 bucket {self.bucket!r} does not exist at {self.endpoint_url}") from e
            if code in ("NoSuchKey", "NotFound") or (status == 404 and key is not None):
                raise ObjectNotFound(f"{where} does not exist") from e
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
                raise StorageError(
                    f"S3 credentials rejected by {self.endpoint_url} while trying to {action} {where}: {msg}"
                ) from e
            if code in ("AccessDenied", "AllAccessDisabled", "Forbidden") or status == 403:
                raise StorageError(
                    f"access denied to {action} {where} at {self.endpoint_url}: check the credentials, "
                    "the bucket policy, and that the bucket exists"
                ) from e
            if code in ("NotImplemented",) or status == 501:
                raise StorageError(f"the S3 server at {self.endpoint_url} cannot {action} {where}: {msg}") from e
            raise StorageError(f"S3 error trying to {action} {where}: {code or status}: {msg}") from e
        if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            raise StorageError(
                f"no S3 credentials to {action} {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or the store's profile"
            ) from e
        if isinstance(e, (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError)):
            raise StorageError(f"cannot reach the S3 endpoint {self.endpoint_url} to {action} {where}: {e}") from e
        if isinstance(e, ReadTimeoutError):
            raise StorageError(f"the S3 endpoint {self.endpoint_url} timed out trying to {action} {where}") from e
        if isinstance(e, StorageError):
            raise e
        raise StorageError(f"S3 failure trying to {action} {where}: {e}") from e

    @contextlib.contextmanager
    def _translating(self, action: str, key: str | None = None) -> Iterator[None]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as e:
            self._fail(e, action, key)
        except Boto3Error as e:
            # s3transfer's S3UploadFailedError is raised while handling the real ClientError
            cause = e.__cause__ or e.__context__
            if isinstance(cause, (BotoCoreError, ClientError)):
                self._fail(cause, action, key)
            raise StorageError(f"S3 failure trying to {action} {self.uri(key) if key else self.url}: {e}") from e

    def _check_bucket(self) -> None:
        """Tell a missing bucket from a missing key (both are a bare 404 on HEAD)."""
        if self._bucket_checked:
            return
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                raise StorageError(f"S3 bucket {self.bucket!r} does not exist at {self.endpoint_url}") from e
            self._fail(e, "check the bucket")
        except Exception as e:  # noqa: BLE001 - translated
            self._fail(e, "check the bucket")
        self._bucket_checked = True

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (for tests and `init`-style commands)."""
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
            self._bucket_checked = True
            return
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                self._fail(e, "check the bucket")
        except Exception as e:  # noqa: BLE001 - translated
            self._fail(e, "check the bucket")
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self._client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                self._fail(e, "create the bucket")
            if e.response.get("Error", {}).get("Code") == "BucketAlreadyExists":
                raise StorageError(f"S3 bucket name {self.bucket!r} is taken by another account") from e
        except Exception as e:  # noqa: BLE001 - translated
            self._fail(e, "create the bucket")
        self._bucket_checked = True

    # -- writing -------------------------------------------------------------------------
    def put_file(
        self, key: str, path: str | Path, *, if_absent: bool = False, metadata: dict[str, str] | None = None
    ) -> ObjectInfo:
        full = self._full(key)
        meta = check_metadata(metadata)
        try:
            size = os.path.getsize(path)
            sha = sha256_file(path)
        except OSError as e:
            raise StorageError(f"cannot read {path}: {e.strerror or e}") from e
        return self._put_path(key, full, Path(path), size, sha, meta, if_absent)

    def put_stream(
        self, key: str, stream: BinaryIO, *, if_absent: bool = False, metadata: dict[str, str] | None = None
    ) -> ObjectInfo:
        full = self._full(key)
        meta = check_metadata(metadata)
        h = hashlib.sha256()
        head = bytearray()
        # small objects stay in memory: one PUT
        while len(head) <= self.multipart_threshold:
            chunk = stream.read(min(CHUNK, self.multipart_threshold + 1 - len(head)))
            if not chunk:
                data = bytes(head)
                h.update(data)
                return self._put_small(key, full, data, h.hexdigest(), meta, if_absent)
            head += chunk
        # large: spool to a temp file in $TMPDIR (hashing as we go), then upload it in parts;
        # errors of the stream itself propagate unchanged, and nothing has been sent yet
        with tempfile.TemporaryDirectory(prefix="cleftgan-s3-") as tmpdir:
            spool = Path(tmpdir) / "spool"
            try:
                fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as e:
                raise StorageError(f"cannot spool the upload of {self.uri(key)} to {tmpdir}: {e}") from e
            sha, size = copy_stream(
                cast(BinaryIO, _Prepend(bytes(head), stream)), fd, what=f"the spool file in {tmpdir}", fsync=False
            )
            del head
            return self._put_path(key, full, spool, size, sha, meta, if_absent)

    def _s3_meta(self, sha: str, meta: dict[str, str]) -> dict[str, str]:
        return {**meta, "sha256": sha}

    def _put_small(
        self, key: str, full: str, data: bytes, sha: str, meta: dict[str, str], if_absent: bool
    ) -> ObjectInfo:
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": full,
            "Body": data,
            "Metadata": self._s3_meta(sha, meta),
        }
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        with self._translating("write", key):
            try:
                self._client.put_object(**kwargs)
            except Exception as e:
                self._conditional_conflict(e, key, if_absent)
                raise
        return ObjectInfo(key=key, size=len(data), sha256=sha, metadata=meta)

    def _conditional_conflict(self, e: Exception, key: str, if_absent: bool) -> None:
        """AWS answers 409 ConditionalRequestConflict when create-only puts race: decide."""
        from botocore.exceptions import ClientError

        if (
            if_absent
            and isinstance(e, ClientError)
            and e.response.get("Error", {}).get("Code") == "ConditionalRequestConflict"
        ):
            if self.head(key) is not None:
                raise ObjectExists(f"{self.uri(key)} already exists") from e
            raise StorageError(f"a concurrent write to {self.uri(key)} conflicted with this one; retry") from e

    def _put_path(
        self, key: str, full: str, path: Path, size: int, sha: str, meta: dict[str, str], if_absent: bool
    ) -> ObjectInfo:
        if size <= self.multipart_threshold:
            try:
                data = path.read_bytes()
            except OSError as e:
                raise StorageError(f"cannot read {path}: {e.strerror or e}") from e
            return self._put_small(key, full, data, sha, meta, if_absent)
        if if_absent:
            # fail fast before sending gigabytes; If-None-Match on completion is the real check
            if self.head(key) is not None:
                raise ObjectExists(f"{self.uri(key)} already exists")
            self._multipart_create_only(key, full, path, size, sha, meta)
        else:
            with self._translating("write", key):
                self._client.upload_file(
                    str(path),
                    self.bucket,
                    full,
                    ExtraArgs={"Metadata": self._s3_meta(sha, meta)},
                    Config=self._transfer,
                )
        return ObjectInfo(key=key, size=size, sha256=sha, metadata=meta)

    def _multipart_create_only(
        self, key: str, full: str, path: Path, size: int, sha: str, meta: dict[str, str]
    ) -> None:
        """Multipart upload completed with If-None-Match: * (s3transfer cannot send it)."""
        part_size = max(self.multipart_chunksize, math.ceil(size / MAX_PARTS))
        nparts = math.ceil(size / part_size)
        with self._translating("start an upload of", key):
            upload_id = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=full, Metadata=self._s3_meta(sha, meta)
            )["UploadId"]

        def send(i: int) -> dict[str, Any]:
            with open(path, "rb") as f:
                f.seek(i * part_size)
                body = f.read(part_size)
            resp = self._client.upload_part(
                Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=i + 1, Body=body
            )
            return {"PartNumber": i + 1, "ETag": resp["ETag"]}

        try:
            with self._translating("write", key):
                with ThreadPoolExecutor(max_workers=min(self.max_concurrency, nparts)) as pool:
                    parts = list(pool.map(send, range(nparts)))
                try:
                    self._client.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=full,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                        IfNoneMatch="*",
                    )
                except Exception as e:
                    self._conditional_conflict(e, key, True)
                    raise
        except BaseException:
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            raise

    # -- reading -------------------------------------------------------------------------
    def head(self, key: str) -> ObjectInfo | None:
        full = self._full(key)
        from botocore.exceptions import ClientError

        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=full)
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                self._check_bucket()
                return None
            self._fail(e, "read", key)
        except Exception as e:  # noqa: BLE001 - translated
            self._fail(e, "read", key)
        return self._info(key, resp)

    @staticmethod
    def _info(key: str, resp: dict[str, Any]) -> ObjectInfo:
        meta = dict(resp.get("Metadata") or {})
        sha = meta.pop("sha256", None)
        lm = resp.get("LastModified")
        return ObjectInfo(
            key=key,
            size=int(resp.get("ContentLength", 0)),
            sha256=sha,
            last_modified=lm.timestamp() if lm is not None else None,
            metadata=meta,
        )

    def _get(self, key: str) -> dict[str, Any]:
        full = self._full(key)
        from botocore.exceptions import ClientError

        try:
            return cast("dict[str, Any]", self._client.get_object(Bucket=self.bucket, Key=full))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "NoSuchKey":
                raise ObjectNotFound(f"{self.uri(key)} does not exist") from e
            self._fail(e, "read", key)
        except Exception as e:  # noqa: BLE001 - translated
            self._fail(e, "read", key)

    def open_read(self, key: str) -> BinaryIO:
        resp = self._get(key)
        raw = _BodyReader(resp["Body"], self, key)
        return cast(BinaryIO, io.BufferedReader(raw, buffer_size=CHUNK))

    def get_file(self, key: str, path: str | Path) -> ObjectInfo:
        resp = self._get(key)
        info = self._info(key, resp)
        with io.BufferedReader(_BodyReader(resp["Body"], self, key), buffer_size=CHUNK) as src:
            sha, size = write_file_atomically(cast(BinaryIO, src), path, expected_sha256=info.sha256)
        return ObjectInfo(key=key, size=size, sha256=sha, last_modified=info.last_modified, metadata=info.metadata)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._list(check_prefix(prefix))  # validate now, page lazily

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        root = self._root()
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=root + prefix, PaginationConfig={"PageSize": self.page_size}
        )
        with self._translating("list", prefix or None):
            for page in pages:
                for obj in page.get("Contents", ()):
                    key = obj["Key"][len(root) :]
                    if key.endswith("/"):
                        continue  # "folder" markers made by consoles are not objects
                    try:
                        check_key(key)
                    except StorageError:
                        continue  # a foreign key this store could not address
                    lm = obj.get("LastModified")
                    yield ObjectInfo(
                        key=key, size=int(obj.get("Size", 0)), last_modified=lm.timestamp() if lm else None
                    )

    # -- deleting ------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        full = self._full(key)
        with self._translating("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=full)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` in batches of up to 1000; return the count."""
        keys = [self._full(info.key) for info in self.list(prefix)]
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            with self._translating("delete under", prefix or None):
                resp = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"could not delete {len(errors)} objects under {self.url}/{prefix}, e.g. "
                    f"{first.get('Key')}: {first.get('Code')}: {first.get('Message')}"
                )
        return len(keys)

    def cleanup_incomplete(self, older_than_s: float = 24 * 3600) -> int:
        """Abort multipart uploads under this store's prefix started ``older_than_s`` ago
        (left by killed processes; they cost storage until aborted or expired by a lifecycle rule)."""
        import datetime as dt

        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=older_than_s)
        n = 0
        with self._translating("clean up uploads under"):
            paginator = self._client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._root()):
                for up in page.get("Uploads", ()):
                    initiated = up.get("Initiated")
                    if initiated is not None and initiated.tzinfo is None:
                        initiated = initiated.replace(tzinfo=dt.timezone.utc)
                    if initiated is None or initiated < cutoff:
                        self._client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                        n += 1
        return n


class _Prepend:
    """Read ``first``, then the rest of ``stream``."""

    def __init__(self, first: bytes, stream: BinaryIO) -> None:
        self._first: bytes | None = first
        self._stream = stream

    def read(self, n: int = -1) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            if first:
                return first
        return self._stream.read(n)


class _BodyReader(io.RawIOBase):
    """A raw reader over a botocore StreamingBody that turns network errors into StorageError."""

    def __init__(self, body: Any, store: S3Store, key: str) -> None:
        self._body = body
        self._store = store
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except Exception as e:  # noqa: BLE001 - urllib3/botocore errors, translated
            raise StorageError(f"lost the connection reading {self._store.uri(self._key)}: {e}") from e
        n = len(data)
        view[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._body.close()
        super().close()
