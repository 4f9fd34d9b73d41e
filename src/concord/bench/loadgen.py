"""The load generator: N concurrent clients over worker processes, bounded in time and count.

``run_workload`` prefills the key space when the mix reads or compares, starts ``processes``
worker processes (spawned; each runs uvloop, one aiohttp session whose connection pool has
one connection per client), releases them together once all say they are ready, shows a live
progress
line on stderr, and merges what they measured. Every client runs the same loop whatever the
target: pick an operation by weight and a key at random, send, time, judge. Operations that
start during the warm-up are sent but not recorded. A client stops at the end of the measured
duration, or when the workload's count is used up; a count run is still capped in time.

A batching target (``concord-batch``) puts ``batch_size`` distinct random keys in each
request: every request counts as that many operations (throughput, errors, ``count``), each
timed with the request's latency, so percentiles stay those of requests (of batches).
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import queue
import random
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Final, Protocol, TextIO, TypeAlias

import aiohttp
import uvloop
from yarl import URL

from concord.bench.report import BenchResult, OpStats, ProcessResult, merge_processes
from concord.bench.targets import (
    DEFAULT_BATCH_SIZE,
    PREFILL_WITH,
    PREFILLED_OPS,
    SEMANTIC_ERRORS,
    ConcordBatchTarget,
    HttpRequest,
    Op,
    Target,
    make_target,
)

MAX_DURATION_S: Final = 600.0
MAX_COUNT: Final = 10_000_000
MAX_WARMUP_S: Final = 60.0
MAX_CLIENTS: Final = 4096
MAX_PROCESSES: Final = 16
MAX_KEY_SPACE: Final = 1_000_000
MAX_VALUE_BYTES: Final = 1 << 20
MAX_BATCH_SIZE: Final = 10_000
MAX_REQUEST_TIMEOUT_S: Final = 60.0
ERROR_BACKOFF_S: Final = 0.01
"""A client pauses this long after a failure to serve, so a dead endpoint is not spun on."""
START_TIMEOUT_S: Final = 60.0
FINISH_GRACE_S: Final = 30.0
PREFILL_CONCURRENCY: Final = 64
PREFILL_ATTEMPTS: Final = 5
HEALTH_PATH: Final = "/health"
"""Answered by Concord's nodes and etcd's members alike: the reachability probe."""
PROBE_TIMEOUT_S: Final = 5.0
PROGRESS_TTY_INTERVAL_S: Final = 0.5
PROGRESS_LOG_INTERVAL_S: Final = 5.0
MESSAGE_POLL_S: Final = 0.2
KEY_PREFIX: Final = b"k"
VALUE_ALPHABET: Final = b"abcdefghijklmnopqrstuvwxyz0123456789"


Counters: TypeAlias = "ctypes.Array[ctypes.c_longlong]"
"""Shared with the parent, two slots per worker: operations done, errors (warm-up included)."""


READY: Final = 1
FAILED: Final = 2
FINISHED: Final = 3
MessageQueue: TypeAlias = "multiprocessing.Queue[tuple[int, int, Any]]"
"""Worker -> parent: (slot, READY | FAILED | FINISHED, None | traceback | result JSON)."""


class EventLike(Protocol):
    def wait(self, timeout: float | None = None) -> bool: ...


class BenchError(RuntimeError):
    """The run could not be carried out (a worker failed, the prefill failed, a bound hit)."""


def parse_mix(text: str) -> tuple[tuple[Op, int], ...]:
    """``put`` or ``put=80,get=20`` -> ((Op.PUT, 80), (Op.GET, 20)); weights are integers."""
    mix: list[tuple[Op, int]] = []
    for part in text.split(","):
        name, _, weight_text = part.strip().partition("=")
        try:
            op = Op(name)
        except ValueError:
            raise ValueError(f"unknown operation {name!r} (known: {', '.join(Op)})") from None
        weight = int(weight_text) if weight_text else 1
        if weight <= 0:
            raise ValueError(f"weight of {name} must be positive, not {weight}")
        if any(op == seen for seen, _ in mix):
            raise ValueError(f"operation {name} given twice")
        mix.append((op, weight))
    return tuple(mix)


def format_mix(mix: Sequence[tuple[Op, int]]) -> str:
    return mix[0][0].value if len(mix) == 1 else ",".join(f"{op.value}={w}" for op, w in mix)


@dataclass(frozen=True, slots=True)
class Workload:
    """What to run: every field is bounded, so every run ends by itself."""

    target: str
    endpoints: tuple[str, ...]
    mix: tuple[tuple[Op, int], ...] = ((Op.PUT, 1),)
    clients: int = 64
    processes: int = 1
    duration_s: float = 10.0  # the measured time; with ``count``, the cap on it
    count: int | None = None
    warmup_s: float = 1.0
    key_size_bytes: int = 8
    value_size_bytes: int = 256
    key_space: int = 10_000
    request_timeout_s: float = 10.0
    seed: int = 1
    batch_size: int | None = None  # puts per request of a batching target (default 64)

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        target = make_target(self.target, b"")  # raises on an unknown target
        check(bool(self.endpoints), "at least one endpoint is needed")
        for endpoint in self.endpoints:
            check(_is_base_url(endpoint),
                  f"endpoint {endpoint!r} is not a base URL like http://127.0.0.1:7001")
        check(bool(self.mix), "the operation mix is empty")
        if self.batching:
            others = [op.value for op, _ in self.mix if op is not Op.PUT]
            check(not others, f"{self.target} sends batches of puts only, not "
                              f"{', '.join(others)}: use --op put")
            check(self.batch_size is None or 1 <= self.batch_size <= MAX_BATCH_SIZE,
                  f"batch size must be 1..{MAX_BATCH_SIZE}")
            check(self.ops_per_request <= self.key_space,
                  f"batch size {self.ops_per_request} exceeds the key space: the keys of a "
                  "batch are distinct")
        else:
            check(self.batch_size is None,
                  f"a batch size applies to batching targets only, not {self.target}")
        unsupported = [op.value for op, _ in self.mix if op not in target.ops]
        check(not unsupported, f"{self.target} does not support {', '.join(unsupported)}")
        check(1 <= self.clients <= MAX_CLIENTS, f"clients must be 1..{MAX_CLIENTS}")
        check(1 <= self.processes <= min(MAX_PROCESSES, self.clients),
              f"processes must be 1..min({MAX_PROCESSES}, clients)")
        check(0 < self.duration_s <= MAX_DURATION_S, f"duration must be in (0, {MAX_DURATION_S}] s")
        check(self.count is None or self.processes <= self.count <= MAX_COUNT,
              f"count must be processes..{MAX_COUNT}")
        check(0 <= self.warmup_s <= MAX_WARMUP_S, f"warm-up must be in [0, {MAX_WARMUP_S}] s")
        check(1 <= self.key_space <= MAX_KEY_SPACE, f"key space must be 1..{MAX_KEY_SPACE}")
        digits = len(str(self.key_space - 1))
        check(len(KEY_PREFIX) + digits <= self.key_size_bytes <= 1024,
              f"keys must be {len(KEY_PREFIX) + digits}..1024 bytes for {self.key_space} keys")
        check(1 <= self.value_size_bytes <= MAX_VALUE_BYTES,
              f"values must be 1..{MAX_VALUE_BYTES} bytes")
        check(0 < self.request_timeout_s <= MAX_REQUEST_TIMEOUT_S,
              f"request timeout must be in (0, {MAX_REQUEST_TIMEOUT_S}] s")

    @property
    def batching(self) -> bool:
        """Whether each request carries ``ops_per_request`` puts."""
        return isinstance(make_target(self.target, b""), ConcordBatchTarget)

    @property
    def ops_per_request(self) -> int:
        if not self.batching:
            return 1
        return DEFAULT_BATCH_SIZE if self.batch_size is None else self.batch_size

    @property
    def value(self) -> bytes:
        repeats = self.value_size_bytes // len(VALUE_ALPHABET) + 1
        return (VALUE_ALPHABET * repeats)[: self.value_size_bytes]

    def key(self, index: int) -> bytes:
        assert 0 <= index < self.key_space
        digits = self.key_size_bytes - len(KEY_PREFIX)
        return KEY_PREFIX + str(index).zfill(digits).encode("ascii")

    @property
    def needs_prefill(self) -> bool:
        return any(op in PREFILLED_OPS for op, _ in self.mix)

    def client_split(self) -> list[range]:
        """Global client ids per process, as even as possible."""
        base, extra = divmod(self.clients, self.processes)
        bounds = list(accumulate([0] + [base + (i < extra) for i in range(self.processes)]))
        return [range(bounds[i], bounds[i + 1]) for i in range(self.processes)]

    def count_split(self) -> list[int | None]:
        """Each process's share of ``count``, in proportion to its clients."""
        if self.count is None:
            return [None] * self.processes
        shares = [self.count * len(ids) // self.clients for ids in self.client_split()]
        shares[0] += self.count - sum(shares)
        return list(shares)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "endpoints": list(self.endpoints),
                "mix": format_mix(self.mix), "clients": self.clients,
                "processes": self.processes, "duration_s": self.duration_s, "count": self.count,
                "warmup_s": self.warmup_s, "key_size_bytes": self.key_size_bytes,
                "value_size_bytes": self.value_size_bytes, "key_space": self.key_space,
                "request_timeout_s": self.request_timeout_s, "seed": self.seed,
                **({"batch_size": self.ops_per_request} if self.batching else {})}


def _is_base_url(text: str) -> bool:
    try:
        url = URL(text)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.host) and not url.query_string


async def unreachable_endpoints(endpoints: Sequence[str],
                                timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, str]:
    """The endpoints that gave no HTTP answer at all to ``GET /health``, each with why. Any
    status counts as an answer: a member without a leader still answers, and its errors are
    the run's to count."""
    async def probe(session: aiohttp.ClientSession, endpoint: str) -> str | None:
        try:
            async with session.get(endpoint + HEALTH_PATH) as response:
                await response.read()
                return None
        except TimeoutError:
            return f"no answer within {timeout_s:g} s"
        except aiohttp.ClientError as exc:
            return str(exc) or type(exc).__name__

    async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        reasons = await asyncio.gather(*(probe(session, e) for e in endpoints))
    return {e: reason for e, reason in zip(endpoints, reasons, strict=True)
            if reason is not None}


async def send(session: aiohttp.ClientSession, target: Target, endpoint: str, op: Op,
               key: bytes) -> str | None:
    """Perform ``op`` on ``key`` at ``endpoint``: None on success, else the error kind."""
    return await send_request(session, target, endpoint, op, target.request(op, key))


async def send_request(session: aiohttp.ClientSession, target: Target, endpoint: str, op: Op,
                       request: HttpRequest) -> str | None:
    """Send ``request`` (performing ``op``) to ``endpoint``; None on success, else the error
    kind."""
    try:
        async with session.request(request.method, URL(endpoint + request.path, encoded=True),
                                   data=request.body or None,
                                   headers=request.headers) as response:
            body = await response.read()
            return target.judge(op, response.status, body, key=request.key)
    except TimeoutError:
        return "timeout"
    except aiohttp.ClientConnectionError as exc:
        return f"connection {type(exc).__name__}"
    except aiohttp.ClientError as exc:
        return f"client {type(exc).__name__}"


def _session(connections: int, request_timeout_s: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                 timeout=aiohttp.ClientTimeout(total=request_timeout_s))


async def prefill(workload: Workload) -> None:
    """Write every key of the key space once with the workload's value, through its target,
    with each write the mix's reads need (``PREFILL_WITH``)."""
    target = make_target(workload.target, workload.value)
    writes = sorted({PREFILL_WITH[op] for op, _ in workload.mix if op in PREFILL_WITH})
    pending = [(write, index) for write in writes for index in range(workload.key_space)]
    pending.reverse()

    async def writer(endpoint: str) -> None:
        while pending:
            write, index = pending.pop()
            key = workload.key(index)
            for attempt in range(PREFILL_ATTEMPTS):
                error = await send(session, target, endpoint, write, key)
                if error is None:
                    break
                if attempt == PREFILL_ATTEMPTS - 1:
                    raise BenchError(f"prefill of {key!r} failed: {error}")
                await asyncio.sleep(ERROR_BACKOFF_S * 10 * (attempt + 1))

    async with _session(PREFILL_CONCURRENCY, workload.request_timeout_s) as session:
        endpoints = workload.endpoints
        await asyncio.gather(*(writer(endpoints[i % len(endpoints)])
                               for i in range(PREFILL_CONCURRENCY)))


class _Worker:
    """The clients of one worker process and what they measured."""

    def __init__(self, workload: Workload, client_ids: range, budget: int | None,
                 counters: Counters, slot: int) -> None:
        self.workload = workload
        self.client_ids = client_ids
        self.budget = budget
        self.counters = counters
        self.ops_slot, self.errors_slot = 2 * slot, 2 * slot + 1
        self.target = make_target(workload.target, workload.value)
        self.keys = [workload.key(i) for i in range(workload.key_space)]
        self.stats = {op: OpStats() for op, _ in workload.mix}
        self.measure_start = self.deadline = self.last_completion = 0.0
        self.hit_time_cap = False

    async def run(self, ready: Callable[[], None], start: EventLike) -> ProcessResult:
        w = self.workload
        async with _session(len(self.client_ids), w.request_timeout_s) as session:
            ready()
            if not start.wait(START_TIMEOUT_S):  # blocking: nothing else runs on this loop yet
                raise BenchError("no start signal from the parent")
            self.measure_start = time.perf_counter() + w.warmup_s
            self.deadline = self.measure_start + w.duration_s
            await asyncio.gather(*(self.run_client(session, i) for i in self.client_ids))
        elapsed_s = max(0.0, self.last_completion - self.measure_start)
        stopped_by = ("time cap" if self.hit_time_cap
                      else "duration" if w.count is None else "count")
        return ProcessResult(len(self.client_ids), elapsed_s,
                             {op.value: stats for op, stats in self.stats.items()}, stopped_by)

    async def run_client(self, session: aiohttp.ClientSession, client_id: int) -> None:
        w = self.workload
        rng = random.Random(w.seed * MAX_CLIENTS + client_id)
        endpoint = w.endpoints[client_id % len(w.endpoints)]
        ops = [op for op, _ in w.mix]
        cumulative_weights = list(accumulate(weight for _, weight in w.mix))
        counters = self.counters
        per_request = w.ops_per_request
        key_indexes = range(len(self.keys))
        while True:
            now = time.perf_counter()
            measured = now >= self.measure_start
            if measured:
                if now >= self.deadline:
                    self.hit_time_cap = self.budget is not None
                    return
                if self.budget is not None:
                    if self.budget <= 0:
                        return
                    self.budget -= per_request
            op = ops[0] if len(ops) == 1 else rng.choices(ops, cum_weights=cumulative_weights)[0]
            if isinstance(self.target, ConcordBatchTarget):
                request = self.target.request_many(
                    op, [self.keys[i] for i in rng.sample(key_indexes, per_request)])
            else:
                request = self.target.request(op, self.keys[rng.randrange(len(self.keys))])
            started_ns = time.perf_counter_ns()
            error = await send_request(session, self.target, endpoint, op, request)
            latency_us = (time.perf_counter_ns() - started_ns) // 1000
            counters[self.ops_slot] += per_request
            if error is not None:
                counters[self.errors_slot] += per_request
            if measured:
                self.last_completion = max(self.last_completion, time.perf_counter())
                if error is None:
                    self.stats[op].latency.record_us(latency_us, per_request)
                else:
                    self.stats[op].count_error(error, per_request)
            if error is not None and error not in SEMANTIC_ERRORS:
                await asyncio.sleep(ERROR_BACKOFF_S)


def _worker_main(workload: Workload, slot: int, client_ids: range, budget: int | None,
                 counters: Counters, start: EventLike, messages: MessageQueue) -> None:
    """A worker process's entry point: say ready, wait for the start, run, send the result
    (or the traceback) home."""
    try:
        worker = _Worker(workload, client_ids, budget, counters, slot)
        result: ProcessResult = uvloop.run(
            worker.run(lambda: messages.put((slot, READY, None)), start))
    except KeyboardInterrupt:
        return
    except BaseException:
        messages.put((slot, FAILED, traceback.format_exc()))
        return
    messages.put((slot, FINISHED, result.to_json()))


@dataclass(slots=True)
class _Progress:
    """The live line on stderr: overwritten on a terminal, a line every few seconds elsewhere."""

    stream: TextIO | None
    label: str
    warmup_s: float
    started: float
    last_time: float = 0.0
    last_ops: int = 0
    next_time: float = 0.0

    def __post_init__(self) -> None:
        self.last_time = self.started
        self.next_time = self.started + self.interval_s

    @property
    def is_tty(self) -> bool:
        return self.stream is not None and self.stream.isatty()

    @property
    def interval_s(self) -> float:
        return PROGRESS_TTY_INTERVAL_S if self.is_tty else PROGRESS_LOG_INTERVAL_S

    def update(self, now: float, ops: int, errors: int) -> None:
        if self.stream is None or now < self.next_time:
            return
        rate = (ops - self.last_ops) / (now - self.last_time)
        since = now - self.started
        phase = "warm-up" if since < self.warmup_s else "measuring"
        line = (f"{self.label} {phase} {since:6.1f} s  {ops:>10,} ops  {rate:>9,.0f} ops/s  "
                f"{errors:,} errors")
        self.stream.write(f"\r{line}   " if self.is_tty else f"{line}\n")
        self.stream.flush()
        self.last_time, self.last_ops, self.next_time = now, ops, now + self.interval_s

    def finish(self) -> None:
        if self.is_tty:
            assert self.stream is not None
            self.stream.write("\n")
            self.stream.flush()


def run_workload(workload: Workload, *, label: str = "",
                 progress: TextIO | None = sys.stderr) -> BenchResult:
    """Run ``workload`` to the end and return the merged result; raises ``BenchError``."""
    if workload.needs_prefill:
        asyncio.run(prefill(workload))
    context = multiprocessing.get_context("spawn")
    counters = context.Array("q", 2 * workload.processes, lock=False)
    start = context.Event()
    messages: MessageQueue = context.Queue()
    processes = [
        context.Process(target=_worker_main, name=f"concord-bench-{slot}", daemon=True,
                        args=(workload, slot, ids, budget, counters, start, messages))
        for slot, (ids, budget) in enumerate(
            zip(workload.client_split(), workload.count_split(), strict=True))
    ]
    try:
        for process in processes:
            process.start()
        _wait_for(READY, processes, messages, time.perf_counter() + START_TIMEOUT_S)
        start.set()
        tracker = _Progress(progress, label or workload.target, workload.warmup_s,
                            time.perf_counter())
        deadline = (tracker.started + workload.warmup_s + workload.duration_s
                    + workload.request_timeout_s + FINISH_GRACE_S)

        def show(now: float) -> None:
            values = list(counters)
            tracker.update(now, sum(values[0::2]), sum(values[1::2]))

        try:
            documents = _wait_for(FINISHED, processes, messages, deadline, show)
        finally:
            tracker.finish()
    finally:
        for process in processes:
            if process.pid is None:
                continue  # never started
            if process.is_alive():
                process.terminate()
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
    measured = [ProcessResult.from_json(documents[slot]) for slot in range(len(processes))]
    return BenchResult(workload.to_json(), merge_processes(measured), workload.endpoints)


def _wait_for(kind: int, processes: list[Any], messages: MessageQueue, deadline: float,
              on_poll: Callable[[float], None] | None = None) -> dict[int, Any]:
    """Every worker's message of ``kind`` (slot -> payload); raises ``BenchError`` when one
    fails, dies, or the deadline passes first."""
    payloads: dict[int, Any] = {}
    while len(payloads) < len(processes):
        try:
            slot, got, payload = messages.get(timeout=MESSAGE_POLL_S)
        except queue.Empty:
            pass
        else:
            if got == FAILED:
                raise BenchError(f"worker {slot} failed:\n{payload}")
            assert got == kind, f"worker {slot} sent {got} while {kind} was awaited"
            payloads[slot] = payload
            continue
        now = time.perf_counter()
        if now > deadline:
            raise BenchError(f"{len(processes) - len(payloads)} worker(s) did not answer in time")
        for slot, process in enumerate(processes):
            if slot not in payloads and process.exitcode not in (None, 0):
                raise BenchError(f"worker {slot} exited with status {process.exitcode}")
        if on_poll is not None:
            on_poll(now)
    return payloads
