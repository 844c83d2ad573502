"""The benchmark's link emulator (benchmarks/latency_proxy.py) delays and paces what it forwards.

Only lower bounds are asserted: the proxy must never make a link faster than the model says
(that would inflate the benchmark's ratios); how much slower a loaded machine makes it is noise.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from latency_proxy import LatencyProxy  # noqa: E402


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP server that echoes everything back on each connection; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while chunk := conn.recv(1 << 16):
                conn.sendall(chunk)

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield listener.getsockname()[1]
    stop.set()
    t.join()
    listener.close()


def round_trip(port: int, payload: bytes) -> tuple[bytes, float, float]:
    """Connect, send payload, read it all back: (echoed bytes, connect seconds, transfer seconds)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"x")  # the proxy connects onward only now, after its emulated handshake
        assert s.recv(1) == b"x"
        t1 = time.perf_counter()
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        got = bytearray()
        while len(got) < len(payload):
            chunk = s.recv(1 << 20)
            assert chunk, "the proxy closed the connection early"
            got += chunk
        t2 = time.perf_counter()
        sender.join()
    return bytes(got), t1 - t0, t2 - t1


def test_round_trip_time_is_added_and_bytes_are_intact(echo_server: int) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    with LatencyProxy("127.0.0.1", echo_server, rtt_s=0.05) as proxy:
        got, connect_s, transfer_s = round_trip(proxy.port, payload)
        assert proxy.connections == 1
    assert got == payload
    assert connect_s >= 0.05 + 0.05  # the handshake RTT, then one RTT for the first byte's echo
    assert transfer_s >= 0.05  # out and back: half an RTT each way


def test_bandwidth_cap_paces_each_direction(echo_server: int) -> None:
    payload = b"\0" * (4 << 20)
    rate = 20e6  # bytes/s a direction: 4 MiB takes >= 0.21 s through it
    with LatencyProxy("127.0.0.1", echo_server, rtt_s=0.0, conn_bytes_per_s=rate) as proxy:
        got, _, transfer_s = round_trip(proxy.port, payload)
    assert got == payload
    assert transfer_s >= len(payload) / rate * 0.99  # both directions pipeline, so one transfer time at least


def test_parallel_connections_are_each_paced(echo_server: int) -> None:
    """Two connections at once: both arrive intact, each paced at the rate, both counted."""
    payload = b"\1" * (1 << 20)
    with LatencyProxy("127.0.0.1", echo_server, rtt_s=0.01, conn_bytes_per_s=10e6) as proxy:
        results: list[tuple[bytes, float, float]] = []
        threads = [threading.Thread(target=lambda: results.append(round_trip(proxy.port, payload))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert proxy.connections == 2
    assert [r[0] == payload for r in results] == [True, True]
    assert all(r[2] >= len(payload) / 10e6 * 0.99 for r in results)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="rtt_s"):
        LatencyProxy("127.0.0.1", 1, rtt_s=-1)
    with pytest.raises(ValueError, match="conn_bytes_per_s"):
        LatencyProxy("127.0.0.1", 1, rtt_s=0, conn_bytes_per_s=0)
