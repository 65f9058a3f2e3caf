#!/usr/bin/env python3
"""The two commands of the README, on a machine with nothing but Python 3.11+.

    python3 run.py          set up (virtualenv, packages, database, a local user) and serve on 127.0.0.1:8000
    python3 run.py test     set up and run the test suite (extra arguments go to pytest)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("CHAT_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def log(text: str) -> None:
    print(f"[run] {text}", flush=True)


def ensure_environment() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 (run.py is what tells an older Python to step aside)
        sys.exit("Python 3.11 or newer is needed.")
    if not PYTHON.exists():
        log(f"creating virtualenv in {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    requirements = ROOT / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = VENV / ".requirements.sha256"
    if not stamp.exists() or stamp.read_text() != digest:
        log("installing packages from requirements.txt")
        subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
        subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "-r", str(requirements)], check=True)
        stamp.write_text(digest)


def manage(*args: str) -> None:
    subprocess.run([str(PYTHON), "manage.py", *args], cwd=ROOT, check=True)


def serve() -> None:
    ensure_environment()
    log("migrating the database")
    manage("migrate", "--noinput", "-v", "0")
    manage("ensure_local_user")
    host = os.environ.get("HOST", "127.0.0.1")
    port = os.environ.get("PORT", "8000")
    log(f"serving on http://{host}:{port}/ (Ctrl+C stops)")
    os.chdir(ROOT)
    os.execv(str(PYTHON), [str(PYTHON), "-m", "daphne", "-b", host, "-p", port, "chatproject.asgi:application"])


def test(args: list[str]) -> None:
    ensure_environment()
    os.chdir(ROOT)
    os.execv(str(PYTHON), [str(PYTHON), "-m", "pytest", *args])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "test":
        test(sys.argv[2:])
    elif len(sys.argv) == 1 or sys.argv[1] == "serve":
        serve()
    else:
        sys.exit(__doc__)
