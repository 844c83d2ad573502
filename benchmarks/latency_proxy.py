"""A TCP forwarder on 127.0.0.1 that emulates a remote link: a fixed round-trip time and,
optionally, a bandwidth cap per connection.

    with LatencyProxy("127.0.0.1", 8333, rtt_s=0.020) as proxy:
        boto3.client("s3", endpoint_url=proxy.url)       # every request now pays the RTT
    LatencyProxy("127.0.0.1", 8333, rtt_s=0.020, conn_bytes_per_s=50e6)   # and 50 MB/s a connection

The model is a link with latency: every byte read from one side is written to the other rtt/2
later (in order, chunks pipelined, so a long body is delayed by rtt/2 once, not per chunk), in
both directions, and a new connection first waits one RTT (the TCP handshake to a remote host).
An HTTP request with its response therefore costs at least one RTT more than direct, and a PUT
that waits for ``100 Continue`` before its body (botocore sends every PUT with ``Expect:
100-continue``) two. With ``conn_bytes_per_s`` each direction of each connection is also a
serial link of that rate (a chunk leaves only after the previous one has gone through), which
is how a single TCP stream to a remote store behaves once its window or the server's
per-connection limit binds; connections do not share it, so N connections get N times it, up
to what the server and this machine can do. Not modelled: packet loss, TCP slow start. The
proxy's own copying costs CPU on this machine.

For a benchmark, not for production: it runs an asyncio loop in a daemon thread; ``stop()``
(or leaving the ``with`` block) closes the listener, drops every open connection and joins the
thread, within ``stop_timeout_s``. Kernel netem would be the tool of choice where available.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

CHUNK = 256 << 10
QUEUE_CHUNKS = 64  # per direction and connection: bounds the bytes held in flight (16 MiB)


class LatencyProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        rtt_s: float,
        *,
        conn_bytes_per_s: float | None = None,
        host: str = "127.0.0.1",
        stop_timeout_s: float = 10.0,
    ) -> None:
        if rtt_s < 0:
            raise ValueError("rtt_s must be >= 0")
        if conn_bytes_per_s is not None and conn_bytes_per_s <= 0:
            raise ValueError("conn_bytes_per_s must be > 0 (or None: no cap)")
        self.target_host, self.target_port, self.rtt_s = target_host, target_port, rtt_s
        self.conn_bytes_per_s = conn_bytes_per_s
        self.host, self.stop_timeout_s = host, stop_timeout_s
        self.port = 0
        self.connections = 0  # accepted so far
        self.bytes_up = 0  # client -> server
        self.bytes_down = 0  # server -> client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle (caller's thread) -------------------------------------------------------
    def start(self) -> LatencyProxy:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="latency-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.stop_timeout_s):
            raise RuntimeError("the latency proxy did not start")
        if self._error is not None:
            raise RuntimeError(f"the latency proxy did not start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(stopping.set)
        thread.join(self.stop_timeout_s)
        if thread.is_alive():
            raise RuntimeError(f"the latency proxy did not stop within {self.stop_timeout_s} s")
        self._thread = None

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- the loop (proxy thread) ---------------------------------------------------------
    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        handlers: set[asyncio.Task[None]] = set()

        async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await self._connection(cr, cw)
            except asyncio.CancelledError:
                pass  # stop(): the connection is closed; ending quietly keeps asyncio from logging it
            finally:
                handlers.discard(task)

        try:
            server = await asyncio.start_server(handle, self.host, 0)
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for t in list(handlers):
                t.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    async def _connection(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections += 1
        sw: asyncio.StreamWriter | None = None
        pumps: list[asyncio.Task[None]] = []
        try:
            await asyncio.sleep(self.rtt_s)  # the TCP handshake with a remote host
            sr, sw = await asyncio.open_connection(self.target_host, self.target_port)
            half = self.rtt_s / 2
            pumps = [
                asyncio.create_task(self._pump(cr, sw, half, up=True)),
                asyncio.create_task(self._pump(sr, cw, half, up=False)),
            ]
            # both directions to their end, or the first failure (a reset): then drop both
            await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        except OSError:
            pass
        finally:
            for t in pumps:
                t.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for w in (cw, sw):
                if w is not None:
                    w.close()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(w.wait_closed(), 1.0)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, up: bool) -> None:
        """Copy reader to writer, each chunk written ``delay`` seconds after it has gone through the
        link (at once without a bandwidth cap; else after the chunks before it, at the capped rate)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes | OSError]] = asyncio.Queue(QUEUE_CHUNKS)
        rate = self.conn_bytes_per_s

        async def feed() -> None:
            link_free_at = 0.0  # when this direction's link has sent everything queued so far
            try:
                while True:
                    data = await reader.read(CHUNK)
                    sent_at = loop.time()
                    if rate is not None:
                        link_free_at = max(link_free_at, sent_at) + len(data) / rate
                        sent_at = link_free_at
                    await queue.put((sent_at + delay, data))
                    if not data:
                        return
            except OSError as e:  # a reset: handed on in order, it drops the connection
                await queue.put((loop.time(), e))

        feeder = asyncio.create_task(feed())
        try:
            while True:
                due, data = await queue.get()
                if isinstance(data, BaseException):
                    raise data
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:  # end of stream: pass the half-close on
                    if writer.can_write_eof():
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                    return
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
