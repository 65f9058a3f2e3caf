"""Delta streaming: our server (daphne + Channels + the reply task) against a bare `websockets` server.

Sets up its own SQLite database in a temporary folder, starts a real daphne process on it with
the demo provider at full speed (DEMO_SLOW_DELAY=0), opens sockets with a token, sends `/slow N`
and measures what arrives until `message.completed`: delta frames, the deltas they carry
(coalescing shows as fewer frames than deltas), time to the first delta and to completion,
deltas and characters per second, gaps between frames at the client, and the server process's
CPU time. The same turn is then streamed by bench/bare_server.py (one JSON frame per delta,
nothing else) as the floor. Every run also checks that the text reassembled by offset equals the
final content of `message.completed`.

    .venv/bin/python bench/stream_bench.py            # in-memory layer, 1 socket, N = 1000 and 5000
    .venv/bin/python bench/stream_bench.py --redis    # also the Redis layer, and 2 sockets on one session

Prints a markdown table and writes bench/results.json. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
CHUNK = re.compile(r"chunk \d+ ")
CLK_TCK = os.sysconf("SC_CLK_TCK")

SETUP_SCRIPT = """
import json
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from sessions_app import services
user = get_user_model().objects.create_user("bench", password=None)
token = Token.objects.create(user=user)
session = services.session_create(owner=user, title="bench")
print("BENCH " + json.dumps({"token": token.key, "session": str(session.pk)}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)  # nearest rank
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# Processes -------------------------------------------------------------------------


class Server:
    """A child process on 127.0.0.1 that is always stopped (see `stop`), logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path, port: int) -> None:
        self.name, self.args, self.env, self.log_path, self.port = name, args, env, log, port
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, check: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if check():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} was not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-3000:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def base_env(db_url: str, secret_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "CHANNEL_PREFIX", "CACHE_PREFIX", "DJANGO_ALLOW_ASYNC_UNSAFE"}}
    env.update(
        DATABASE_URL=db_url,
        SECRET_KEY=secret_key,
        DEBUG="0",
        ALLOWED_HOSTS="127.0.0.1",
        THROTTLE_WRITES="100000/min", TURNS_PER_MINUTE="0", MAX_REPLIES_PER_USER="0", WS_MAX_SOCKETS_PER_USER="0",
        DEMO_SLOW_DELAY="0",
        DEMO_DELTA_DELAY="0",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        OPENAI_API_KEY="",
    )
    return env


def setup_database(tmp: Path, secret_key: str) -> tuple[str, str, str]:
    """A fresh SQLite database with a user, a token and a session: (DATABASE_URL, token, session id)."""
    db_url = f"sqlite:///{tmp / 'bench.sqlite3'}"
    env = base_env(db_url, secret_key)
    subprocess.run([PYTHON, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True, timeout=120)
    out = subprocess.run([PYTHON, "manage.py", "shell", "-c", SETUP_SCRIPT], cwd=ROOT, env=env, check=True, timeout=60,
                         capture_output=True, text=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCH "))
    data = json.loads(line[len("BENCH "):])
    return db_url, data["token"], data["session"]


def start_daphne(tmp: Path, db_url: str, secret_key: str, redis_url: str | None) -> Server:
    port = free_port()
    env = base_env(db_url, secret_key)
    app = "chatproject.asgi:application"
    if redis_url:
        prefix = f"bench{uuid.uuid4().hex[:10]}"
        env.update(REDIS_URL=redis_url, CHANNEL_PREFIX=prefix, CACHE_PREFIX=prefix)
    args = [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app]
    server = Server("daphne", args, env, tmp / f"daphne-{port}.log", port).start()
    server.prefix = env.get("CHANNEL_PREFIX", "")  # type: ignore[attr-defined]

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    server.wait_ready(healthy)
    return server


def start_bare(tmp: Path) -> Server:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = Server("bare", [PYTHON, str(BENCH / "bare_server.py"), str(port)], env, tmp / f"bare-{port}.log", port).start()
    server.wait_ready(lambda: "ready" in server.log())
    return server


def forget_redis_prefix(redis_url: str, prefix: str) -> None:
    """Delete the keys this run left on Redis (group sets outlive the run by a day otherwise)."""
    if not prefix:
        return
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))[:100000]
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


# One turn ---------------------------------------------------------------------------


@dataclass
class Received:
    reply_id: str | None = None
    deltas: list[tuple[float, int, str]] = field(default_factory=list)  # (arrival, offset, delta)
    done_at: float | None = None
    final: dict[str, Any] | None = None
    error: str | None = None
    kinds: dict[str, int] = field(default_factory=dict)  # every frame by type, to explain a timeout


async def collect(ws: ClientConnection, max_frames: int, got: Received) -> Received:
    for _ in range(max_frames):
        try:
            text = await ws.recv()
        except ConnectionClosed as exc:
            got.error = f"socket closed: {exc}"
            return got
        now = time.perf_counter()
        frame = json.loads(text)
        kind = frame.get("type")
        got.kinds[kind] = got.kinds.get(kind, 0) + 1
        if kind == "message.delta":
            if frame["message_id"] == got.reply_id:
                got.deltas.append((now, frame["offset"], frame["delta"]))
        elif kind == "message.created" and frame["message"].get("role") == "assistant":
            got.reply_id = frame["message"]["id"]
        elif kind == "message.completed" and frame["message"]["id"] == got.reply_id:
            got.done_at, got.final = now, frame["message"]
            return got
        elif kind == "error":
            got.error = f"{frame.get('code')}: {frame.get('detail')}"
            return got
    got.error = f"no message.completed within {max_frames} frames"
    return got


def reassemble(deltas: list[tuple[float, int, str]]) -> tuple[str, int]:
    """The text put together by offset, and how many frames did not fit (a gap or a conflict)."""
    text, bad = "", 0
    for _, offset, delta in deltas:
        if offset == len(text):
            text += delta
        elif offset < len(text):
            overlap = text[offset : offset + len(delta)]
            if not delta.startswith(overlap):
                bad += 1
            text += delta[len(overlap):]
        else:
            bad += 1
    return text, bad


async def turn(url: str, headers: dict[str, str], n: int, sockets: int, server_pid: int, timeout: float) -> dict[str, Any]:
    conns = [await connect(url, additional_headers=headers, max_size=None, compression=None, open_timeout=10) for _ in range(sockets)]
    try:
        for ws in conns:  # session.ready (or the bare server's greeting)
            ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if ready.get("type") != "session.ready":
                raise RuntimeError(f"unexpected first frame: {ready}")
        received = [Received() for _ in conns]
        collectors = [asyncio.create_task(collect(ws, 2 * n + 100, got)) for ws, got in zip(conns, received, strict=True)]
        cpu0, client_cpu0 = cpu_seconds(server_pid), time.process_time()
        t0 = time.perf_counter()
        await conns[0].send(json.dumps({"type": "user_message", "content": f"/slow {n}", "client_id": str(uuid.uuid4())}))
        try:
            results = await asyncio.wait_for(asyncio.gather(*collectors), timeout)
        except TimeoutError:
            for task in collectors:
                task.cancel()
            seen = "; ".join(f"socket {i}: reply {got.reply_id}, frames {got.kinds}" for i, got in enumerate(received))
            return {"n": n, "sockets": sockets, "ok": False, "problem": f"no message.completed within {timeout}s ({seen})"}
        server_cpu, client_cpu = cpu_seconds(server_pid) - cpu0, time.process_time() - client_cpu0
    finally:
        for ws in conns:
            await ws.close()
    expected = "".join(f"chunk {i} " for i in range(1, n + 1))
    per_socket = []
    for got in results:
        text, bad = reassemble(got.deltas)
        final = (got.final or {}).get("content")
        times = [t for t, _, _ in got.deltas]
        gaps = [(b - a) * 1000 for a, b in itertools.pairwise(times)]
        problems = []
        if got.error:
            problems.append(got.error)
        if bad:
            problems.append(f"{bad} frames did not fit by offset")
        if got.final is None:
            problems.append(f"no message.completed ({len(got.deltas)} delta frames, {len(text)} chars before)")
        elif text != final:
            problems.append(f"reassembled {len(text)} chars != final {len(final or '')} chars")
        if got.final is not None and final != expected:
            problems.append("final content is not the expected text")
        if got.final and got.final.get("status") != "complete":
            problems.append(f"status {got.final.get('status')}")
        per_socket.append({
            "frames": len(got.deltas),
            "deltas": len(CHUNK.findall(text)),
            "chars": len(text),
            "first_delta_ms": (times[0] - t0) * 1000 if times else None,
            "total_s": (got.done_at - t0) if got.done_at else None,
            "stream_s": (times[-1] - times[0]) if len(times) > 1 else 0.0,
            "gap_p50_ms": percentile(gaps, 50),
            "gap_p99_ms": percentile(gaps, 99),
            "gap_max_ms": max(gaps, default=0.0),
            "ok": not problems,
            "problems": problems,
        })
    total = max((s["total_s"] or timeout) for s in per_socket)
    deltas = sum(s["deltas"] for s in per_socket)
    chars = sum(s["chars"] for s in per_socket)
    return {
        "n": n,
        "sockets": sockets,
        "ok": all(s["ok"] for s in per_socket),
        "frames": statistics.mean(s["frames"] for s in per_socket),
        "deltas": deltas / sockets,
        "first_delta_ms": max((s["first_delta_ms"] or 0.0) for s in per_socket),
        "total_s": total,
        "deltas_per_s": deltas / total,  # deltas delivered, over all sockets
        "chars_per_s": chars / total,
        "gap_p50_ms": max(s["gap_p50_ms"] for s in per_socket),
        "gap_p99_ms": max(s["gap_p99_ms"] for s in per_socket),
        "gap_max_ms": max(s["gap_max_ms"] for s in per_socket),
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_delta": server_cpu / n * 1e6,
        "client_cpu_s": client_cpu,
        "per_socket": per_socket,
    }


async def run_config(name: str, layer: str, url: str, headers: dict[str, str], server: Server, sizes: list[int], sockets: int,
                     repeats: int, timeout: float) -> list[dict[str, Any]]:
    await turn(url, headers, 50, sockets, server.pid, timeout)  # warm-up: imports, first queries, JIT-free but cache-warm
    rows = []
    for n in sizes:
        runs = [await turn(url, headers, n, sockets, server.pid, timeout) for _ in range(repeats)]
        measured = [r for r in runs if "total_s" in r]
        median = sorted(measured, key=lambda r: r["total_s"])[len(measured) // 2] if measured else runs[0]
        row = {"server": name, "layer": layer, **median, "ok": all(r["ok"] for r in runs), "runs": runs}
        if measured:  # CPU time is counted in clock ticks (10 ms): over all runs it is precise enough
            row["total_min_s"] = min(r["total_s"] for r in measured)
            row["total_max_s"] = max(r["total_s"] for r in measured)
            row["client_cpu_us_per_delta"] = sum(r["client_cpu_s"] for r in measured) / (n * len(measured)) * 1e6
            row["server_cpu_us_per_delta"] = sum(r["server_cpu_s"] for r in measured) / (n * len(measured)) * 1e6
        rows.append(row)
        print(f"  {name:5} {layer:6} sockets={sockets} N={n}: {row.get('total_s', float('nan')):.3f}s, "
              f"{row.get('frames', 0):.0f} frames, {'OK' if row['ok'] else 'FAIL'}", flush=True)
    return rows


# Output -----------------------------------------------------------------------------

COLUMNS = ["server", "layer", "sockets", "N", "frames", "deltas/frame", "first delta ms", "send→completed s, median (min–max)", "deltas/s",
           "chars/s", "gap p50 ms", "gap p99 ms", "gap max ms", "server CPU µs/delta", "client CPU µs/delta", "check"]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in rows:
        if "total_s" not in r:
            cells = [r["server"], r["layer"], str(r["sockets"]), str(r["n"])] + ["—"] * (len(COLUMNS) - 5) + ["FAIL"]
        else:
            cells = [
                r["server"], r["layer"], str(r["sockets"]), str(r["n"]), f"{r['frames']:.0f}",
                f"{r['deltas'] / r['frames']:.2f}" if r["frames"] else "—", f"{r['first_delta_ms']:.1f}", f"{r['total_s']:.3f} ({r['total_min_s']:.3f}–{r['total_max_s']:.3f})",
                f"{r['deltas_per_s']:,.0f}", f"{r['chars_per_s']:,.0f}", f"{r['gap_p50_ms']:.3f}", f"{r['gap_p99_ms']:.3f}",
                f"{r['gap_max_ms']:.1f}", f"{r['server_cpu_us_per_delta']:.0f}", f"{r['client_cpu_us_per_delta']:.0f}", "OK" if r["ok"] else "FAIL",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "")
    import daphne
    import django
    import websockets

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "daphne": daphne.__version__,
        "websockets": websockets.__version__,
    }


async def main_async(args: argparse.Namespace, tmp: Path, servers: list[Server]) -> list[dict[str, Any]]:
    secret_key = secrets.token_urlsafe(40)
    db_url, token, session_id = setup_database(tmp, secret_key)
    headers = {"Authorization": f"Token {token}"}
    fanout = [1, 2] if args.redis else [1]
    rows: list[dict[str, Any]] = []

    bare = start_bare(tmp)
    servers.append(bare)
    for sockets in fanout:
        rows += await run_config("bare", "—", f"ws://127.0.0.1:{bare.port}/", {}, bare, args.sizes, sockets, args.repeats, args.timeout)
    bare.stop()

    layers: list[tuple[str, str | None]] = [("memory", None)] + ([("redis", args.redis_url)] if args.redis else [])
    for layer, redis_url in layers:
        ours = start_daphne(tmp, db_url, secret_key, redis_url)
        servers.append(ours)
        try:
            url = f"ws://127.0.0.1:{ours.port}/ws/sessions/{session_id}/"
            for sockets in fanout:
                rows += await run_config("ours", layer, url, headers, ours, args.sizes, sockets, args.repeats, args.timeout)
        finally:
            ours.stop()
            if redis_url:
                forget_redis_prefix(redis_url, ours.prefix)  # type: ignore[attr-defined]
        # daphne's access log names every socket; anything else (a warning, a traceback) is worth showing
        noise = ("WSCONNECTING", "WSCONNECT", "WSDISCONNECT", '"GET /healthz"')
        log = [line for line in ours.log().splitlines() if line.strip() and not any(n in line for n in noise)]
        if log:
            print(f"  daphne ({layer}) log:\n" + "\n".join(log[-20:]), flush=True)
    rows.sort(key=lambda r: (r["sockets"], r["n"], r["layer"] == "—", r["layer"]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,5000", help="deltas per reply, comma-separated (the demo caps /slow at 5000)")
    parser.add_argument("--repeats", type=int, default=5, help="turns per size; the table shows the median by time")
    parser.add_argument("--redis", action="store_true", help="also the Redis channel layer, and 2 sockets on one session")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a turn may take")
    parser.add_argument("--json", type=Path, default=BENCH / "results.json")
    args = parser.parse_args()
    args.sizes = [min(int(s), 5000) for s in args.sizes.split(",") if s.strip()]

    tmp = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    servers: list[Server] = []
    started = time.monotonic()
    try:
        rows = asyncio.run(main_async(args, tmp, servers))
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    ok = all(r["ok"] for r in rows)
    print()
    print(table(rows))
    print()
    print(f"Correctness (text reassembled by offset == message.completed content, every run): {'OK' if ok else 'FAIL'}")
    for r in rows:
        for run in r["runs"]:
            for problem in [run.get("problem")] + [p for s in run.get("per_socket", []) for p in s["problems"]]:
                if problem:
                    print(f"  FAIL {r['server']}/{r['layer']} sockets={r['sockets']} N={r['n']}: {problem}")
    result = {
        "command": " ".join([Path(PYTHON).name, *sys.argv]),
        "machine": machine(),
        "sizes": args.sizes,
        "repeats": args.repeats,
        "seconds": round(time.monotonic() - started, 1),
        "ok": ok,
        "rows": rows,
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {args.json} in {result['seconds']}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
