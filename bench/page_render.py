"""The page while a long reply streams: does the tab keep up? Real Chromium, a real daphne server.

A fresh SQLite database in a temporary folder, one daphne process (demo provider,
`DEMO_DELTA_DELAY` between pieces), one Chromium tab (Playwright, headless). The tab signs in,
opens a new chat and sends `/long CHARS` (the demo provider's Markdown: headings, paragraphs,
lists, code blocks, in pieces of 200 characters). An init script measures, from the first
delta on the page to the reply shown `complete`:

- every animation-frame callback's duration (the page renders a streaming reply in one per
  frame): count, frames a second, p50, p95 and max in ms;
- long tasks (over 50 ms: the tab did not answer input meanwhile): count and total ms;
- how far the tab fell behind the server: the time the page took from the first delta to
  showing the reply complete, minus the server's own time for the reply (its row's
  `completed_at - created_at`, which starts earlier, at the placeholder).

    .venv/bin/python bench/page_render.py --chars 50000 --json /tmp/page.json

Needs Chromium (`CHROMIUM_PATH`, or /usr/bin/chromium) and Playwright's Python package (in the
project's requirements).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from history import percentile

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-password-123"

MEASURE = """
(() => {
  const m = { frames: [], longTasks: [], start: null, end: null };
  window.__bench = m;
  const raf = window.requestAnimationFrame.bind(window);
  window.requestAnimationFrame = (cb) => raf((t) => {
    const t0 = performance.now();
    try { cb(t); } finally { if (m.start !== null && m.end === null) m.frames.push(performance.now() - t0); }
  });
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if (m.start !== null && m.end === null) m.longTasks.push(e.duration);
  }).observe({ type: "longtask", buffered: false });
})();
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True)
    return done.stdout


def run(chars: int, delay: float, chromium: str) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="pagebench-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"}}
    env.update(
        DATABASE_URL=f"sqlite:///{folder / 'db.sqlite3'}", SECRET_KEY=secrets.token_urlsafe(40), DEBUG="0", DEMO_DELTA_DELAY=str(delay),
        ALLOWED_HOSTS="127.0.0.1,localhost", LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
    )
    server = None
    try:
        manage(env, "migrate", "-v0")
        manage(env, "shell", "-c", f"from django.contrib.auth import get_user_model; get_user_model().objects.create_user('bench', password='{PASSWORD}')")
        server = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "chatproject.asgi:application"],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox"])
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.add_init_script(MEASURE)
            page.goto(f"{url}/accounts/login/?next=/")
            page.get_by_label("Username").fill("bench")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_selector("#new-session")
            page.click("#new-session")
            page.wait_for_function("() => document.querySelector('#conn').dataset.state === 'connected'")
            page.fill("#composer-input", f"/long {chars}")
            page.click("#send-button")
            last = "#messages article.msg[data-role=assistant]:last-of-type"
            page.wait_for_function(f"() => Number(document.querySelector('{last}')?.dataset.length) > 0")
            page.evaluate("() => { window.__bench.start = performance.now(); }")
            t0 = time.perf_counter()
            page.wait_for_function(f"() => document.querySelector('{last}')?.dataset.status === 'complete'", timeout=600_000, polling=50)
            page_s = time.perf_counter() - t0
            page.evaluate("() => { window.__bench.end = performance.now(); }")
            m = page.evaluate("() => window.__bench")
            shown = page.evaluate(f"() => document.querySelector('{last}').dataset.length")
            headings = page.locator(f"{last} .msg__body h2").count()
            browser.close()
        saved = json.loads(manage(env, "shell", "-c", (
            "import json; from chat.models import Message; m = Message.objects.filter(role='assistant').latest('seq');"
            "print(json.dumps([len(m.content), (m.completed_at - m.created_at).total_seconds(), m.content.count('## Part')]))"
        )).strip().splitlines()[-1])
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
    frames = m["frames"]
    window = (m["end"] - m["start"]) / 1000
    return {
        "chars": chars, "delay_s": delay, "saved_chars": saved[0], "shown_chars": int(shown), "headings": headings, "saved_headings": saved[2],
        "page_s": round(page_s, 2), "server_s": round(saved[1], 2), "behind_s": round(page_s - saved[1], 2),
        "frames": len(frames), "frames_per_s": round(len(frames) / window, 1) if window else 0.0,
        "frame_p50_ms": round(statistics.median(frames), 2) if frames else 0.0, "frame_p95_ms": round(percentile(frames, 95), 2) if frames else 0.0,
        "frame_max_ms": round(max(frames, default=0.0), 1), "long_tasks": len(m["longTasks"]), "long_task_ms": round(sum(m["longTasks"])),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--chars", default="50000", help="reply lengths, comma-separated")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds between the demo provider's pieces (DEMO_DELTA_DELAY)")
    parser.add_argument("--label", default="", help="a name for this run's rows (e.g. before, after)")
    parser.add_argument("--json")
    args = parser.parse_args()
    chromium = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
    rows = [run(int(c), args.delay, chromium) for c in args.chars.split(",")]
    print(f"\n## The page during a long reply ({datetime.now().strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, pieces of 200 characters {args.delay * 1000:g} ms apart)\n")
    print("| run | chars | shown = saved | page s | server s | behind s | frames | frames/s | frame p50 / p95 / max ms | long tasks (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        same = r["shown_chars"] == r["saved_chars"] and r["headings"] == r["saved_headings"]
        print(f"| {args.label} | {r['chars']:,} | {'yes' if same else 'NO'} | {r['page_s']} | {r['server_s']} | {r['behind_s']} | {r['frames']} | {r['frames_per_s']} |"
              f" {r['frame_p50_ms']} / {r['frame_p95_ms']} / {r['frame_max_ms']} | {r['long_tasks']} ({r['long_task_ms']}) |")
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps({"label": args.label, **r}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
