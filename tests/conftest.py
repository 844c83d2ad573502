"""Shared fixtures. The S3 server starts only when a test asks for it (once per session).

- ``s3_server`` / ``s3_endpoint`` (session): a real SeaweedFS S3 server on a free loopback port
  (moto's in-memory server if weed cannot start). While it runs, AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION/AWS_REGION are set and ~/.aws is ignored.
  Set CLEFTGAN_TEST_S3_ENDPOINT to use an already running server instead (credentials from
  the environment).
- ``s3_bucket`` (session): a bucket that exists on that server.
- ``s3_store_factory``: ``make(**S3Store kwargs) -> S3Store`` at a fresh prefix of that bucket.
- ``store``: a fresh, empty ObjectStore, parametrised over "file" and "s3".
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from services.s3_server import S3Server, start_s3_server  # noqa: E402

from cleftgan_hpc.data.dataset import write_dataset  # noqa: E402
from cleftgan_hpc.storage.base import ObjectStore  # noqa: E402

TEST_BUCKET = "cleftgan-test"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("aws-home")
    mp.setenv("AWS_CONFIG_FILE", str(home / "config"))  # absent files: ignore the user's ~/.aws
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        mp.delenv(var, raising=False)
    external = os.environ.get("CLEFTGAN_TEST_S3_ENDPOINT")
    if external:
        server = S3Server(endpoint_url=external, kind="external", _stop=lambda: None)
    else:
        server = start_s3_server(tmp_path_factory.mktemp("s3server"))
        for name, value in server.env().items():
            mp.setenv(name, value)
    try:
        yield server
    finally:
        server.stop()
        mp.undo()


@pytest.fixture(scope="session")
def s3_endpoint(s3_server: S3Server) -> str:
    return s3_server.endpoint_url


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint: str) -> str:
    from cleftgan_hpc.storage.s3 import S3Store

    S3Store(TEST_BUCKET, endpoint_url=s3_endpoint).ensure_bucket()
    return TEST_BUCKET


@pytest.fixture
def s3_store_factory(s3_endpoint: str, s3_bucket: str) -> Callable[..., Any]:
    from cleftgan_hpc.storage.s3 import S3Store

    def make(**kwargs: Any) -> S3Store:
        return S3Store(s3_bucket, f"t-{uuid.uuid4().hex[:12]}", endpoint_url=s3_endpoint, **kwargs)

    return make


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        from cleftgan_hpc.storage.local import LocalStore

        return LocalStore(tmp_path / "store")
    return request.getfixturevalue("s3_store_factory")()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 smooth random 32x32 RGB images with integer labels 0..2."""
    rng = np.random.RandomState(0)
    base = rng.rand(12, 4, 4, 3)
    images = [(np.kron(b, np.ones((8, 8, 1))) * 255).astype(np.uint8) for b in base]
    path = tmp_path_factory.mktemp("data") / "tiny.zip"
    write_dataset(path, images, labels=[i % 3 for i in range(12)])
    return path
