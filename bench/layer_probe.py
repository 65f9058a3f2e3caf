"""How many messages a second one process can receive through a Redis channel layer, and why.

channels_redis's core layer (`RedisChannelLayer`) puts every process-local channel of a process
(`specific.<client_prefix>!<id>`) into one Redis sorted set, and `receive` lets one coroutine at a
time pull from it (`receive_lock`). Each message then costs four Redis round trips in series:
`_brpop_with_clean` runs an EVAL that restores the backup queue, a BZPOPMIN, and a ZADD to the
backup queue; then the cleaner task's ZPOPMIN of the backup must finish before the next
`receive_single` may start (`receive_clean_locks`). One process therefore receives at most about
1 / (4 x round trip) messages a second, however many consumers wait in it.

This script reproduces that in one asyncio process against a local Redis and compares it with the
alternatives, for C consumers, each in its own group (one chat session per socket), and a producer
that sends one message to every group per tick (`--rate` ticks a second, for `--seconds`):

1. `core`: `channels_redis.core.RedisChannelLayer` (configured like chatproject/settings.py:
   capacity 2000, expiry 60, socket_timeout 15); consumers `group_add` and loop on `receive`;
   the producer `group_send`s to every group at once (`asyncio.gather`) each tick. A first row,
   `core, receive only`, queues `--preload` messages before the consumers start and measures only
   how fast they are received, with no producer in the process: that is the row to hold against
   the 1 / (4 x RTT) ceiling.
2. `pubsub layer`: `channels_redis.pubsub.RedisPubSubChannelLayer`, same workload.
3. `redis-py pub/sub`: one `PubSub` connection subscribed to C channels, a reader task that hands
   each message to its consumer's queue, and one publisher client that sends each tick either one
   PUBLISH per channel at once (`asyncio.gather`) or all of them in one pipeline.

Every message carries its send time (`time.perf_counter()`), so the latency is from the producer's
call to the consumer's hands. Before the cases the script measures a plain PING from the same
process (median of 200) to print the predicted ceiling of the core layer.

Columns: **target** is consumers x rate; **sent** what the producer managed (ticks it could not
keep up with are skipped, not caught up); **recv/s** the messages received during the sending
window divided by its length; **received** and **delivered** also count what arrived during a
short drain afterwards (`--drain`, 1 s); **dropped** is what the core layer's `group_send` threw
away because the process's sorted set was over capacity (counted from its log; the capacity is
per process, not per consumer, since all its channels share one key); **CPU** is this
process's CPU time over the window's wall time (Redis runs in its own process); **ceiling** is
1 / (4 x RTT) for the core layer and 1 / RTT for the pub/sub layer, whose publishes are serialised
by a lock.

    .venv/bin/python bench/layer_probe.py                                   # 20 consumers, 50 msg/s each, 5 s
    .venv/bin/python bench/layer_probe.py --consumers 5,10,20,50 --json /tmp/layer_probe.json   # about 100 s

Options: `--consumers 20` (or a comma-separated sweep), `--rate 50`, `--seconds 5`, `--drain 1`, `--preload 1000`,
`--redis-url redis://127.0.0.1:6379/0`, `--json PATH`. Every key the run creates starts with a
unique prefix, and they are deleted after each case and at exit, even after an error. Pub/sub
channels ignore the database number, the core layer's keys do not: while the test suite runs on the
same Redis (its cache.clear() is a FLUSHDB on db 0), pass another database, e.g. `redis://127.0.0.1:6379/15`.
A core row whose keys vanished is marked (!).
"""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import msgpack
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer
from redis import asyncio as aioredis

# The core layer as chatproject/settings.py configures it.
CORE_CONFIG: dict[str, Any] = {"capacity": 2000, "expiry": 60}
SOCKET_TIMEOUT = 15
CORE_ROUND_TRIPS = 4  # EVAL + BZPOPMIN + ZADD + the cleaner's ZPOPMIN, in series per message
PINGS = 200

SendTick = Callable[[int], Awaitable[int]]


@dataclass
class Stats:
    """What the consumers of one case saw."""

    sent: int = 0
    received: list[tuple[float, float]] = field(default_factory=list)  # (receive time, latency s)
    cpu_at_last: float = 0.0  # process CPU time at the last receive

    def record(self, sent_at: float) -> None:
        now = time.perf_counter()
        self.received.append((now, now - sent_at))
        self.cpu_at_last = time.process_time()


@dataclass
class Result:
    case: str
    consumers: int
    rate: float
    seconds: float
    target: int
    sent: int
    received: int
    received_in_window: int
    recv_per_s: float
    delivered: float
    p50_ms: float | None
    p99_ms: float | None
    dropped: int
    cpu: float
    ceiling: float | None
    lost_cancels: int = 0
    note: str | None = None
    error: str | None = None


class OverCapacityCounter(logging.Handler):
    """Counts the channels the core layer's group_send reports over capacity (it only logs them)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "over capacity" in record.msg and record.args:
            self.dropped += int(record.args[0])  # type: ignore[index]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def delete_keys(client: aioredis.Redis, prefix: str) -> int:
    deleted = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += await client.delete(*batch)
            batch.clear()
    if batch:
        deleted += await client.delete(*batch)
    return deleted


async def ping_rtt(client: aioredis.Redis) -> float:
    """Median round trip of a PING from this process, in seconds."""
    for _ in range(20):
        await client.ping()
    samples = []
    for _ in range(PINGS):
        start = time.perf_counter()
        await client.ping()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def produce(send_tick: SendTick, rate: float, seconds: float, stats: Stats) -> tuple[float, float]:
    """Calls send_tick `rate` times a second for `seconds`; ticks it falls behind on are skipped. Returns the window's start and end."""
    interval = 1.0 / rate
    start = time.perf_counter()
    end = start + seconds
    next_tick = start
    tick = 0
    while (now := time.perf_counter()) < end:
        if now < next_tick:
            await asyncio.sleep(min(next_tick, end) - now)
            continue
        stats.sent += await send_tick(tick)
        tick += 1
        next_tick = max(next_tick + interval, time.perf_counter() - interval / 2)
    return start, time.perf_counter()


async def drain(stats: Stats, expected: Callable[[], int], limit: float) -> None:
    deadline = time.perf_counter() + limit
    while len(stats.received) < expected() and time.perf_counter() < deadline:
        await asyncio.sleep(0.02)


async def stop(tasks: list[asyncio.Task[Any]]) -> int:
    """Cancels the tasks until they end. Returns how many survived the first cancel.

    On Python 3.11 a consumer of the core layer can swallow a cancel: redis-py sends each command
    through `asyncio.wait_for(..., socket_timeout)`, and 3.11's `wait_for` returns the result instead
    of raising when the cancel lands as the send completes. The consumer then loops on BZPOPMIN
    (every 5 s) forever, so it is cancelled again.
    """
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    survived = 0
    for attempt in range(20):
        if not pending:
            break
        _, pending = await asyncio.wait(pending, timeout=0.5)
        if attempt == 0:
            survived = len(pending)
        for task in pending:
            task.cancel()
    await asyncio.gather(*(task for task in tasks if task.done()), return_exceptions=True)
    return survived


def summarise(
    case: str, consumers: int, args: argparse.Namespace, stats: Stats, window: tuple[float, float], cpu: float, dropped: int, ceiling: float | None, *, streamed: bool = True
) -> Result:
    start, end = window
    in_window = sum(1 for received_at, _ in stats.received if received_at <= end)
    latencies = [latency for _, latency in stats.received] if streamed else []
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    return Result(
        case=case,
        consumers=consumers,
        rate=args.rate if streamed else 0.0,
        seconds=end - start,
        target=round(consumers * args.rate * args.seconds) if streamed else stats.sent,
        sent=stats.sent,
        received=len(stats.received),
        received_in_window=in_window,
        recv_per_s=in_window / (end - start),
        delivered=len(stats.received) / stats.sent if stats.sent else 0.0,
        p50_ms=None if p50 is None else p50 * 1000,
        p99_ms=None if p99 is None else p99 * 1000,
        dropped=dropped,
        cpu=cpu / (end - start),
        ceiling=ceiling,
    )


async def run_window(send_tick: SendTick, args: argparse.Namespace, stats: Stats, expected: Callable[[], int]) -> tuple[tuple[float, float], float]:
    cpu_start = time.process_time()
    window = await produce(send_tick, args.rate, args.seconds, stats)
    cpu = time.process_time() - cpu_start
    await drain(stats, expected, args.drain)
    return window, cpu


async def case_core(consumers: int, args: argparse.Namespace, prefix: str, rtt: float, *, preload: int = 0) -> Result:
    """The core layer. With `preload`, that many messages are queued first and the consumers only receive (no producer)."""
    layer = RedisChannelLayer(hosts=[{"address": args.redis_url, "socket_timeout": SOCKET_TIMEOUT}], prefix=f"{prefix}core.", **CORE_CONFIG)
    counter = OverCapacityCounter()
    core_logger = logging.getLogger("channels_redis.core")
    core_logger.addHandler(counter)
    core_logger.setLevel(logging.INFO)
    core_logger.propagate = False
    stats = Stats()
    tasks: list[asyncio.Task[Any]] = []
    groups = [f"{prefix}g{i}" for i in range(consumers)]
    channels: list[str] = []

    async def consume(channel: str) -> None:
        while True:
            message = await layer.receive(channel)
            stats.record(message["t"])

    async def send_tick(tick: int) -> int:
        now = time.perf_counter()
        await asyncio.gather(*(layer.group_send(group, {"type": "bench.message", "t": now, "tick": tick}) for group in groups))
        return len(groups)

    try:
        for group in groups:
            channels.append(await layer.new_channel())
            await layer.group_add(group, channels[-1])
        ceiling = 1 / (CORE_ROUND_TRIPS * rtt)
        if preload:
            for tick in range(-(-preload // consumers)):
                stats.sent += await send_tick(tick)
            cpu_start = time.process_time()
            start = time.perf_counter()
            tasks.extend(asyncio.create_task(consume(channel)) for channel in channels)
            await drain(stats, lambda: stats.sent - counter.dropped, args.seconds)
            window = (start, max((received_at for received_at, _ in stats.received), default=time.perf_counter()))
            cpu = (stats.cpu_at_last if stats.received else time.process_time()) - cpu_start
            result = summarise(f"core, receive only ({stats.sent:,} queued)", consumers, args, stats, window, cpu, counter.dropped, ceiling, streamed=False)
        else:
            tasks.extend(asyncio.create_task(consume(channel)) for channel in channels)
            await asyncio.sleep(0.2)  # let every consumer reach its receive
            window, cpu = await run_window(send_tick, args, stats, lambda: stats.sent - counter.dropped)
            result = summarise("core", consumers, args, stats, window, cpu, counter.dropped, ceiling)
        result.lost_cancels = await stop(tasks)
        # Something that runs FLUSHDB on the same database (the test suite's cache.clear() does) wipes the queues.
        if not await layer.connection(0).exists(layer._group_key(groups[0])):
            result.note = "keys wiped by another client during the case (FLUSHDB?): use another --redis-url database"
        return result
    finally:
        await stop(tasks)
        core_logger.removeHandler(counter)
        with contextlib.suppress(Exception):
            await layer.close_pools()


async def case_pubsub_layer(consumers: int, args: argparse.Namespace, prefix: str, rtt: float) -> Result:
    layer = RedisPubSubChannelLayer(hosts=[{"address": args.redis_url, "socket_timeout": SOCKET_TIMEOUT}], prefix=f"{prefix}ps.")
    stats = Stats()
    tasks: list[asyncio.Task[Any]] = []
    groups = [f"{prefix}g{i}" for i in range(consumers)]

    async def consume(channel: str) -> None:
        while True:
            message = await layer.receive(channel)
            stats.record(message["t"])

    async def send_tick(tick: int) -> int:
        now = time.perf_counter()
        await asyncio.gather(*(layer.group_send(group, {"type": "bench.message", "t": now, "tick": tick}) for group in groups))
        return len(groups)

    try:
        for group in groups:
            channel = await layer.new_channel()
            await layer.group_add(group, channel)
            tasks.append(asyncio.create_task(consume(channel)))
        await asyncio.sleep(0.2)
        window, cpu = await run_window(send_tick, args, stats, lambda: stats.sent)
        result = summarise("pubsub layer", consumers, args, stats, window, cpu, 0, 1 / rtt)
        result.lost_cancels = await stop(tasks)
        return result
    finally:
        await stop(tasks)
        with contextlib.suppress(Exception):
            await layer.flush()


async def case_redis_pubsub(consumers: int, args: argparse.Namespace, prefix: str, pipelined: bool) -> Result:
    subscriber = aioredis.Redis.from_url(args.redis_url, socket_timeout=SOCKET_TIMEOUT)
    publisher = aioredis.Redis.from_url(args.redis_url, socket_timeout=SOCKET_TIMEOUT)
    pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
    channels = [f"{prefix}rp.{i}".encode() for i in range(consumers)]
    queues: dict[bytes, asyncio.Queue[bytes]] = {channel: asyncio.Queue() for channel in channels}
    stats = Stats()
    tasks: list[asyncio.Task[Any]] = []

    async def read() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                queues[message["channel"]].put_nowait(message["data"])

    async def consume(queue: asyncio.Queue[bytes]) -> None:
        while True:
            stats.record(msgpack.unpackb(await queue.get())["t"])

    async def send_tick(tick: int) -> int:
        data = msgpack.packb({"type": "bench.message", "t": time.perf_counter(), "tick": tick})
        if pipelined:
            async with publisher.pipeline(transaction=False) as pipe:
                for channel in channels:
                    pipe.publish(channel, data)
                await pipe.execute()
        else:
            await asyncio.gather(*(publisher.publish(channel, data) for channel in channels))
        return len(channels)

    try:
        await pubsub.subscribe(*channels)
        tasks.append(asyncio.create_task(read()))
        tasks.extend(asyncio.create_task(consume(queue)) for queue in queues.values())
        await asyncio.sleep(0.2)
        window, cpu = await run_window(send_tick, args, stats, lambda: stats.sent)
        result = summarise("redis-py pub/sub, pipeline per tick" if pipelined else "redis-py pub/sub, PUBLISH each", consumers, args, stats, window, cpu, 0, None)
        result.lost_cancels = await stop(tasks)
        return result
    finally:
        await stop(tasks)
        with contextlib.suppress(Exception):
            await pubsub.aclose()
        for client in (subscriber, publisher):
            with contextlib.suppress(Exception):
                await client.aclose()


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(results: list[Result]) -> str:
    lines = [
        "| case | consumers | target msg/s | sent | received | recv/s | delivered | p50 ms | p99 ms | dropped | CPU | ceiling msg/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.case} | {r.consumers} | {r.consumers * r.rate:,.0f} | error: {r.error} |||||||||")
            continue
        target = f"{r.consumers * r.rate:,.0f}" if r.rate else "—"
        lines.append(
            f"| {r.case}{' (!)' if r.note else ''} | {r.consumers} | {target} | {r.sent:,} | {r.received:,} | {r.recv_per_s:,.0f} | {r.delivered:.1%} "
            f"| {fmt(r.p50_ms, '.2f')} | {fmt(r.p99_ms, '.1f')} | {r.dropped:,} | {r.cpu:.0%} | {fmt(r.ceiling, ',.0f')} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    if current is not None:
        loop.add_signal_handler(signal.SIGTERM, current.cancel)
    prefix = f"layerprobe.{uuid.uuid4().hex[:12]}."
    load = os.getloadavg()
    admin = aioredis.Redis.from_url(args.redis_url, socket_timeout=SOCKET_TIMEOUT)
    results: list[Result] = []
    try:
        rtt = await ping_rtt(admin)
        print(f"Redis PING round trip from this process: median {rtt * 1e6:.0f} µs over {PINGS} pings", file=sys.stderr)
        cases: list[tuple[str, Callable[[int], Awaitable[Result]]]] = [
            ("core, receive only", lambda c: case_core(c, args, prefix, rtt, preload=args.preload)),
            ("core", lambda c: case_core(c, args, prefix, rtt)),
            ("pubsub layer", lambda c: case_pubsub_layer(c, args, prefix, rtt)),
            ("redis-py pub/sub, PUBLISH each", lambda c: case_redis_pubsub(c, args, prefix, pipelined=False)),
            ("redis-py pub/sub, pipeline per tick", lambda c: case_redis_pubsub(c, args, prefix, pipelined=True)),
        ]
        for consumers in args.consumers:
            for name, run in cases:
                try:
                    result = await run(consumers)
                except (asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except Exception as error:
                    result = Result(name, consumers, args.rate, args.seconds, 0, 0, 0, 0, 0.0, 0.0, None, None, 0, 0.0, None, error=repr(error))
                finally:
                    await delete_keys(admin, prefix)
                results.append(result)
                print(f"{name:38} C={consumers:<3} recv/s {result.recv_per_s:8,.0f}  delivered {result.delivered:6.1%}", file=sys.stderr)

        print(f"Redis PING round trip from this process: median {rtt * 1e6:.0f} µs ({PINGS} pings). Predicted core ceiling 1/(4 x RTT) = {1 / (4 * rtt):,.0f} msg/s.")
        print(f"Load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs.")
        print(f"Workload: each consumer in its own group, {args.rate:g} msg/s per group for {args.seconds:g} s, drain {args.drain:g} s.\n")
        print(table(results))
        for r in results:
            if r.note:
                print(f"\n{r.case}, {r.consumers} consumers: {r.note}.")
        if lost := sum(r.lost_cancels for r in results):
            print(f"\n{lost} consumer(s) ignored their first cancel at teardown and were cancelled again (see `stop`).")
        if args.json:
            payload = {
                "command": " ".join(sys.orig_argv),
                "python": platform.python_version(),
                "versions": {name: version(name) for name in ("channels", "channels-redis", "redis", "msgpack")},
                "redis_server": (await admin.info("server")).get("redis_version"),
                "redis_url": args.redis_url,
                "ping_rtt_us": rtt * 1e6,
                "core_ceiling_msg_per_s": 1 / (4 * rtt),
                "core_config": {**CORE_CONFIG, "socket_timeout": SOCKET_TIMEOUT},
                "args": {k: v for k, v in vars(args).items() if k != "json"},
                "load_average_before": load,
                "results": [asdict(r) for r in results],
            }
            Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        return 1 if any(r.error for r in results) else 0
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(delete_keys(admin, prefix))
        with contextlib.suppress(Exception):
            await admin.aclose()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--consumers", type=lambda s: [int(x) for x in s.split(",") if x], default=[20], help="consumers per case, or a comma-separated sweep (default 20)")
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second to each group (default 50)")
    parser.add_argument("--seconds", type=float, default=5.0, help="sending window per case (default 5)")
    parser.add_argument("--preload", type=int, default=1000, help="messages queued for the core layer's receive-only row (default 1000, under its capacity)")
    parser.add_argument("--drain", type=float, default=1.0, help="seconds to wait for stragglers after the window (default 1)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
