"""Server processes and their liveness, as rows: which process generates what, and which are gone.

Each process has an id (`WORKER_ID`) stamped on the replies, tool calls and plans it drives, and
a `Worker` row with a heartbeat. A reply whose process is dead is marked `interrupted`.

A process is dead when its heartbeat is older than WORKER_TIMEOUT, or, on this host, as soon
as its pid is gone or is this process's own (so a restart right after a crash, even in a
container that comes back with the same pid, finds its replies at once). Processes that share
a hostname must share a pid namespace too (not containers with the host's network but their
own pids): there, use distinct hostnames.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta

from django.conf import settings
from django.db.models.functions import Now

from chat.models import Worker

WORKER_ID = f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
HOSTNAME = socket.gethostname()[:255]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_worker_ids(worker_ids: set[str]) -> set[str]:
    """Which of these worker ids belong to processes that are gone.

    Heartbeats are written and compared in the database's clock, so hosts' clocks may differ.
    """
    worker_ids = set(worker_ids)
    dead = {w for w in worker_ids if not w}  # a streaming reply with no worker cannot finish
    others = worker_ids - {WORKER_ID} - dead
    if not others:
        return dead
    cutoff = Now() - timedelta(seconds=settings.CHAT["WORKER_TIMEOUT"])
    fresh = {row[0]: row for row in Worker.objects.filter(pk__in=others, heartbeat_at__gte=cutoff).values_list("pk", "hostname", "pid")}
    for worker_id in others:
        row = fresh.get(worker_id)
        if row is None or (row[1] == HOSTNAME and (row[2] == os.getpid() or not _pid_alive(row[2]))):
            # Our host and our pid, yet not our id: an earlier life of this process slot (a
            # container restarted with the same hostname and pid 1). Its replies are orphans.
            dead.add(worker_id)
    return dead


def heartbeat() -> None:
    """This process is alive (in the database's clock)."""
    Worker.objects.update_or_create(pk=WORKER_ID, defaults={"hostname": HOSTNAME, "pid": os.getpid(), "heartbeat_at": Now()})


def forget_dead_workers() -> None:
    Worker.objects.filter(heartbeat_at__lt=Now() - timedelta(seconds=max(settings.CHAT["WORKER_TIMEOUT"] * 10, 600))).delete()


def forget_self() -> None:
    Worker.objects.filter(pk=WORKER_ID).delete()
