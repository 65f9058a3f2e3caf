"""The server process around the engine, when it is daphne (Twisted on asyncio's loop): its signals and its ports.

Twisted stops the reactor on SIGTERM, and daphne then cancels every socket's and request's task
at once: replies in flight would end `interrupted` and sockets would drop mid-frame. The engine
takes SIGTERM over instead (`take_sigterm`) and drains first; it stops the reactor itself when
done (`stop`). Outside daphne (tests, commands) there is nothing to hook and each call says so.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from typing import Any


def _reactor() -> Any | None:
    """Twisted's running reactor, or None when this process is not a running daphne."""
    try:
        from twisted.internet import reactor
    except ImportError:
        return None
    return reactor if getattr(reactor, "running", False) else None


def on_shutdown(callback: Callable[[], Any]) -> bool:
    """Run `callback` (it may return a Deferred, waited for) when the reactor stops. False outside daphne."""
    reactor = _reactor()
    if reactor is None:
        return False
    reactor.addSystemEventTrigger("before", "shutdown", callback)
    return True


def take_sigterm(handler: Callable[[], None], loop: asyncio.AbstractEventLoop) -> bool:
    """Call `handler` on `loop` at each SIGTERM, instead of Twisted stopping the reactor. False outside daphne.

    Python runs signal handlers on the main thread, which is daphne's loop thread; the loop may be
    asleep in select(), so the handler is handed over with call_soon_threadsafe, which wakes it.
    """
    reactor = _reactor()
    if reactor is None or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, lambda signum, frame: loop.call_soon_threadsafe(handler))
    return True


def stop_listening() -> int:
    """Close daphne's listening sockets: a balancer's next connection is refused and goes to another process.

    Connections already open stay. Returns how many listening sockets were closed.
    """
    reactor = _reactor()
    if reactor is None:
        return 0
    from daphne.http_protocol import HTTPFactory
    from twisted.internet import tcp, unix

    closed = 0
    for reader in reactor.getReaders():
        if isinstance(reader, (tcp.Port, unix.Port)) and isinstance(getattr(reader, "factory", None), HTTPFactory):
            reader.stopListening()
            closed += 1
    return closed


def open_connections() -> int:
    """Connections daphne serves now (HTTP, and sockets not yet closed by both ends); 0 outside daphne."""
    reactor = _reactor()
    if reactor is None:
        return 0
    from twisted.internet import tcp, unix

    return sum(1 for reader in reactor.getReaders() if isinstance(reader, (tcp.Server, unix.Server)))


def stop() -> None:
    """Stop the reactor (daphne exits once its shutdown triggers, the engine's among them, are done)."""
    reactor = _reactor()
    if reactor is not None:
        reactor.stop()
