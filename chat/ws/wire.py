"""Writing frames straight onto a daphne connection: the hot path of every delta.

Through ASGI, every frame a socket gets goes Channels' `send`, daphne's `handle_reply`,
autobahn's `sendMessage` (which formats its debug log line for every frame, logged or not)
and Twisted's buffered write, which registers the socket with the event loop, waits a turn,
sends, and unregisters it again: three system calls and most of the process's CPU once
hundreds of replies stream (measured with py-spy; see bench/README.md). A text frame from the
server is two to ten bytes of header before the payload (RFC 6455, section 5.2, no mask).

`Wire` writes that frame itself, under daphne only, and only on the plain TCP connection of an
open WebSocket without compression that has nothing queued: then it sends at once, and hands
whatever the kernel did not take to Twisted's own buffer, so order stays Twisted's; `backlog`
tells how much waits there (the hub holds and joins a slow socket's deltas meanwhile; Twisted's
producer slot of the connection is taken by daphne's HTTP channel, so it is asked, not told). Anywhere else (TLS, compression, a closing connection, another server, the test
communicator) `write` answers False and the caller sends through ASGI as usual.
"""

from __future__ import annotations

import logging
import socket
import struct
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

def frame_bytes(payload: bytes) -> bytes:
    """A final, unmasked text frame (opcode 1) carrying `payload`."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def _protocol_of(send: Any) -> Any:
    """daphne's WebSocket protocol (an autobahn one) under a consumer's ASGI `send`, or None elsewhere."""
    args = getattr(send, "args", ())
    protocol = args[0] if args else None
    return protocol if hasattr(protocol, "maxMessagePayloadSize") and hasattr(protocol, "failByDrop") else None


def limit_frames(send: Any, limit: int) -> bool:
    """Make WS_MAX_FRAME_BYTES the connection's own limit: a bigger message is refused with a clean close 1009.

    daphne's default (1 MiB, its --websocket-max-message-size) would otherwise apply, and
    autobahn drops the TCP connection over it without a close frame (`failByDrop`). Set per
    connection, so the one setting holds whatever the server was started with.
    """
    protocol = _protocol_of(send)
    if protocol is None:
        return False
    protocol.maxMessagePayloadSize = limit
    protocol.maxFramePayloadSize = limit
    protocol.failByDrop = False
    return True


class Wire:
    def __init__(self, protocol: Any, transport: Any) -> None:
        self.protocol = protocol
        self.transport = transport

    @classmethod
    def of(cls, send: Any) -> Wire | None:
        """The wire under a consumer's ASGI `send`, when daphne serves it over plain TCP; else None."""
        try:
            from twisted.internet import tcp  # present wherever daphne runs
        except ImportError:
            return None
        args = getattr(send, "args", ())
        protocol = args[0] if args else None
        transport = getattr(protocol, "transport", None)
        if type(transport) is not tcp.Server or not hasattr(protocol, "send_queue") or not hasattr(protocol, "state"):
            return None
        if getattr(protocol, "_perMessageCompress", None) is not None:
            return None
        size = settings.CHAT["WS_SEND_BUFFER_BYTES"]
        if size:
            # Linux grows a socket's send buffer up to megabytes for a reader that does not keep
            # up; a bounded one makes the backlog show in Twisted's buffer, where the hub sees it.
            try:
                transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            except OSError:
                logger.debug("Could not bound the send buffer", exc_info=True)
        return cls(protocol, transport)

    def backlog(self) -> int:
        """Bytes Twisted holds for this connection because the kernel would not take them yet."""
        transport = self.transport
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen

    def write(self, frame: bytes) -> bool:
        """Send a frame built by `frame_bytes`; False when this connection must go through ASGI instead."""
        protocol, transport = self.protocol, self.transport
        # Open, nothing queued by autobahn, no message half sent, no compression negotiated.
        if protocol.state != protocol.STATE_OPEN or protocol.send_queue or protocol.send_state != protocol.SEND_STATE_GROUND or protocol._perMessageCompress is not None:
            return False
        if not transport.connected or transport.disconnecting:
            return True  # going away: nothing to send to
        if transport.dataBuffer or transport._tempDataBuffer:
            transport.write(frame)  # Twisted has bytes waiting: queue behind them
            return True
        sent = transport.writeSomeData(frame)
        if not isinstance(sent, int):
            transport.write(frame)  # the connection is lost; Twisted finds out and closes it
        elif sent < len(frame):
            transport.write(frame[sent:])
        return True
