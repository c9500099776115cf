"""A cheap HTTP/1.1 load generator for the serving benchmarks (closed and open loop).

Requests are serialized once (multipart PNG + WAV + text, the same bytes for every server
measured) and written as bytes on keep-alive connections; a response is read by its status
line and Content-Length. On a 2-core machine the client shares the CPU with the server it
measures, so it must cost little per request: aiohttp spent about a millisecond of CPU per
multipart POST building the form, this a few tens of microseconds.

    closed(url_path, ...)   ``clients`` connections, each sends its next request when the
                            last is answered (what "64 clients" means in the tables); a 503
                            with Retry-After is honoured (the client waits that long), as the
                            HTTP contract asks: a client that re-sends at once turns every
                            shed request into a storm of 503s that takes the CPU from the
                            requests being served (measured: 3,500 503s/s, 80 served/s)
    open_loop(...)          requests arrive at a fixed rate whatever the server does
                            (offered load), each on an idle connection or a new one (up to
                            ``max_connections``); latency counts from the scheduled arrival
Both return counts by status, connection resets, client timeouts and latency percentiles;
given the server's process ids, the closed loop also reports the CPU time the server and this
client spent per served (200) request (from /proc): on a machine shared with other work, req/s
follows the share of the CPU a server gets, CPU per request much less so.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def multipart_request(path: str, host: str, sample: dict[str, Any], boundary: str = "mmfurnace-load-boundary") -> bytes:
    """One POST of ``sample`` (image/audio files, text field) as raw HTTP/1.1 bytes."""
    parts = []
    for name, fname, ctype in (("image", "x.png", "image/png"), ("audio", "x.wav", "audio/wav")):
        if name in sample:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{fname}"\r\n'
                         f"Content-Type: {ctype}\r\n\r\n".encode() + sample[name] + b"\r\n")
    if "text" in sample:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n'.encode()
                     + sample["text"].encode() + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def get_request(path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


class _Response(asyncio.Protocol):
    """One keep-alive connection's reading side: parses each response as its bytes arrive
    (status line, the few headers the load generator needs, Content-Length body) and hands it
    to the waiting request's future — no stream reader, no task per request."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0 or self.waiter is None:
            return
        try:
            status, length, keep, retry_after = _parse_head(bytes(self.buffer[:head_end]))
        except (ValueError, IndexError, RuntimeError) as exc:
            self._fail(exc)
            return
        end = head_end + 4 + length
        if len(self.buffer) < end:
            return
        body = bytes(self.buffer[head_end + 4 : end])
        del self.buffer[:end]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result((status, body, keep, retry_after))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionResetError("connection closed by the server")
        self._fail(self.lost)

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))


def _parse_head(head: bytes) -> tuple[int, int, bool, float]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, keep, retry_after = 0, True, 0.0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"retry-after" and value.strip().isdigit():
            retry_after = float(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
        elif name == b"transfer-encoding":
            raise RuntimeError("chunked responses are not supported by this load generator")
    return status, length, keep, retry_after


class Conn:
    """One keep-alive connection: ``request(raw) -> (status, body, keep_alive, Retry-After)``.

    A protocol object, a future per request and a timer per request: about 20 us of client
    CPU per request, where asyncio streams + ``wait_for`` (a task per request) cost 175 us —
    which, at 10x a server's capacity on the 2 cores both share, was most of the machine."""

    def __init__(self, protocol: _Response) -> None:
        self.protocol = protocol

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        _, protocol = await asyncio.get_running_loop().create_connection(_Response, host, port)
        return cls(protocol)

    def start(self, raw: bytes, timeout_s: float | None = None) -> asyncio.Future:
        """Send ``raw``; the future of its (status, body, keep_alive, Retry-After seconds or 0),
        failed with TimeoutError after timeout_s or ConnectionError when the connection drops."""
        proto = self.protocol
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        if proto.lost is not None or proto.transport is None or proto.transport.is_closing():
            waiter.set_exception(ConnectionResetError("connection is closed"))
            return waiter
        proto.waiter = waiter
        proto.transport.write(raw)
        if timeout_s is not None:
            timer = loop.call_later(timeout_s, _expire, waiter)
            waiter.add_done_callback(lambda _: timer.cancel())
        return waiter

    async def request(self, raw: bytes, timeout_s: float | None = None) -> tuple[int, bytes, bool, float]:
        """(status, body, keep_alive, Retry-After seconds or 0); TimeoutError after timeout_s."""
        return await self.start(raw, timeout_s)

    def close(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.transport.close()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Tally:
    """Outcomes of a load run."""

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {}
        self.latency: dict[int, list[float]] = {}
        self.resets = self.timeouts = self.not_sent = self.backoffs = 0
        self.stage_ms: dict[str, list[float]] = {}

    def add(self, status: int, seconds: float) -> None:
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        self.latency.setdefault(status, []).append(seconds)

    def read_timings(self, body: bytes) -> None:
        try:
            timings = json.loads(body).get("timings_ms") or {}
        except ValueError:
            return
        for k, v in timings.items():
            self.stage_ms.setdefault(k, []).append(v)

    def summary(self, wall_s: float) -> dict[str, Any]:
        ok = np.array(self.latency.get(200, [])) * 1000.0
        every = np.array([x for v in self.latency.values() for x in v]) * 1000.0
        answered = sum(self.statuses.values())

        def pct(a: np.ndarray, q: float) -> float | None:
            return round(float(np.percentile(a, q)), 2) if a.size else None

        return {
            "requests": answered, "wall_s": round(wall_s, 3),
            # req/s served (200); answered_rps counts every status
            "throughput_rps": round(ok.size / wall_s, 2) if wall_s else 0.0,
            "goodput_rps": round(ok.size / wall_s, 2) if wall_s else 0.0,
            "answered_rps": round(answered / wall_s, 2) if wall_s else 0.0,
            "p50_ms": pct(every, 50), "p95_ms": pct(every, 95), "p99_ms": pct(every, 99),
            "ok_p50_ms": pct(ok, 50), "ok_p99_ms": pct(ok, 99),
            "statuses": dict(sorted(self.statuses.items())),
            "connection_resets": self.resets, "client_timeouts": self.timeouts, "not_sent": self.not_sent,
            "retry_after_waits": self.backoffs,
            "stages_mean_ms": {k: round(statistics.fmean(v), 3) for k, v in sorted(self.stage_ms.items())},
            "stages_p50_ms": {k: round(statistics.median(v), 3) for k, v in sorted(self.stage_ms.items())},
        }


# A keep-alive connection idle longer than this is not reused: uvicorn closes idle connections
# after 5 s, and a request written into one that is closing came back as a reset (24 of 6,000
# at 2x capacity) — a client's idle timeout, like any HTTP client pool's, not the server's fault.
IDLE_S = 4.0
# The open loop's scheduling granularity: requests due within a tick are sent together.
TICK_S = 0.001


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds these processes have used (0 for one that is gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / tick


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def _record(tally: Tally, done: asyncio.Future, started: float, timings: bool) -> tuple[bool, float]:
    """Count a finished request: (the connection can be reused, Retry-After of a 503 or 0)."""
    exc = done.exception()
    if exc is not None:
        if isinstance(exc, TimeoutError):
            tally.timeouts += 1
        else:
            tally.resets += 1
        return False, 0.0
    status, body, keep, retry_after = done.result()
    tally.add(status, time.perf_counter() - started)
    if timings and status == 200:
        tally.read_timings(body)
    return keep, retry_after if status == 503 else 0.0


async def _one(conn: Conn, raw: bytes, tally: Tally, started: float, timeout_s: float,
               timings: bool) -> tuple[bool, float]:
    """One request on ``conn``: (the connection can be reused, Retry-After of a 503 or 0)."""
    done = conn.start(raw, timeout_s)
    await asyncio.wait([done])  # its outcome, error or not, is counted by _record
    return _record(tally, done, started, timings)


async def closed(host: str, port: int, requests: list[bytes], *, clients: int, seconds: float, max_requests: int,
                 warmup: bool = True, timeout_s: float = 60.0, timings: bool = True,
                 server_pids: list[int] | None = None) -> dict[str, Any]:
    """``clients`` connections in a closed loop for ``seconds`` (or ``max_requests``);
    ``server_pids``: processes whose CPU time per request to report."""
    tally = Tally()
    sent = 0

    async def client(k: int, deadline: float, limit: int, tally: Tally) -> None:
        nonlocal sent
        conn = await Conn.open(host, port)
        try:
            while time.perf_counter() < deadline and sent < limit:
                raw = requests[(sent + k) % len(requests)]
                sent += 1
                keep, retry_after = await _one(conn, raw, tally, time.perf_counter(), timeout_s, timings)
                if not keep:
                    conn.close()
                    conn = await Conn.open(host, port)
                if retry_after:
                    tally.backoffs += 1
                    await asyncio.sleep(max(0.0, min(retry_after, deadline - time.perf_counter())))
        finally:
            conn.close()

    if warmup:
        await asyncio.gather(*(client(k, time.perf_counter() + 60, clients, Tally()) for k in range(clients)))
        sent = 0
    server_cpu, client_cpu = cpu_seconds(server_pids or []), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(client(k, started + seconds, max_requests, tally) for k in range(clients)))
    out = tally.summary(time.perf_counter() - started)
    answered = max(1, out["statuses"].get("200", 0))  # the cost of what was refused counts too
    if server_pids:
        out["server_cpu_ms_per_req"] = round((cpu_seconds(server_pids) - server_cpu) * 1000 / answered, 3)
    out["client_cpu_ms_per_req"] = round((time.process_time() - client_cpu) * 1000 / answered, 3)
    return out


async def open_loop(host: str, port: int, requests: list[bytes], *, rate: float, seconds: float,
                    max_connections: int = 4096, timeout_s: float = 30.0) -> dict[str, Any]:
    """Requests at ``rate`` per second for ``seconds``, whatever the answers (offered load).

    A request due while an idle connection exists is written from the scheduler itself and
    counted from a done-callback (no task); only opening a new connection takes a task."""
    tally = Tally()
    idle: list[tuple[Conn, float]] = []  # (connection, when it was last answered)
    open_count = 0
    outstanding: set[asyncio.Future] = set()
    opening: set[asyncio.Task] = set()
    lags: list[float] = []  # how late each request left this client (it shares the CPU)

    def finished(conn: Conn, scheduled: float, done: asyncio.Future) -> None:
        nonlocal open_count
        outstanding.discard(done)
        if _record(tally, done, scheduled, False)[0]:
            idle.append((conn, time.perf_counter()))
        else:
            conn.close()
            open_count -= 1

    def send(conn: Conn, raw: bytes, scheduled: float) -> None:
        done = conn.start(raw, timeout_s)
        outstanding.add(done)
        done.add_done_callback(lambda f: finished(conn, scheduled, f))

    async def open_and_send(raw: bytes, scheduled: float) -> None:
        nonlocal open_count
        try:
            conn = await Conn.open(host, port)
        except OSError:
            open_count -= 1
            tally.resets += 1
            return
        send(conn, raw, scheduled)

    def fire(raw: bytes, scheduled: float) -> None:
        nonlocal open_count
        now = time.perf_counter()
        lags.append(now - scheduled)
        while idle:
            conn, used = idle.pop()
            if now - used <= IDLE_S:
                send(conn, raw, scheduled)
                return
            conn.close()  # the server may have closed it: a new one
            open_count -= 1
        if open_count >= max_connections:
            tally.not_sent += 1
            return
        open_count += 1
        task = asyncio.create_task(open_and_send(raw, scheduled))
        opening.add(task)
        task.add_done_callback(opening.discard)

    started = time.perf_counter()
    k = wakeups = 0
    total = int(rate * seconds)
    while k < total:
        wakeups += 1
        now = time.perf_counter()
        due = min(total, int((now - started) * rate) + 1)
        while k < due:
            fire(requests[k % len(requests)], started + k / rate)
            k += 1
        # At least a tick: the loop's timers have millisecond resolution, so a shorter sleep
        # returns at once and the scheduler spun a whole core between arrivals (measured:
        # 780,000 wake-ups for 15,000 requests, 300 us of client CPU per request).
        await asyncio.sleep(max(TICK_S, started + k / rate - time.perf_counter()))
    end = time.perf_counter() + timeout_s + 5
    while (opening or outstanding) and time.perf_counter() < end:
        await asyncio.sleep(0.01)
    wall = time.perf_counter() - started
    for conn, _ in idle:
        conn.close()
    out = tally.summary(wall)
    out.update(offered_rps=round(rate, 1), offered=total, max_open_connections=max_connections, wakeups=wakeups,
               send_lag_p50_ms=round(float(np.percentile(lags, 50)) * 1000, 2) if lags else None,
               send_lag_p99_ms=round(float(np.percentile(lags, 99)) * 1000, 2) if lags else None)
    return out


def run_closed(url: str, requests: list[bytes], **kw: Any) -> dict[str, Any]:
    """:func:`closed` in this process with uvloop (for a child process of a benchmark)."""
    return _run(closed(*_host_port(url), requests, **kw))


def run_open(url: str, requests: list[bytes], **kw: Any) -> dict[str, Any]:
    return _run(open_loop(*_host_port(url), requests, **kw))


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    return host, int(port)


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)
