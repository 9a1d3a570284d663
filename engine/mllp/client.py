"""A minimal MLLP client: send a message, wait for its ACK, check that MSA-2 matches MSH-10."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from engine.mllp.framing import Frame, MLLPDecoder, frame

_SEGMENTS = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class AckInfo:
    code: str  # MSA-1
    control_id: str  # MSA-2
    errors: tuple[str, ...]  # ERR segments as text
    raw: bytes


def read_ack(raw: bytes) -> AckInfo:
    """Read MSA and ERR from an ACK; an answer without MSA is reported as code ''. Only those
    segments are decoded (one ACK read per message sent)."""
    segments = raw.split(b"\r") if b"\n" not in raw else _SEGMENTS.split(raw)
    sep = raw[3:4] if raw.startswith(b"MSH") else b"|"
    code = control = ""
    errors = []
    for seg in segments:
        name = seg[:3]
        if (name != b"MSA" and name != b"ERR") or seg[3:4] not in (sep, b""):
            continue
        if name == b"ERR":
            errors.append(seg.decode("utf-8", errors="replace"))
            continue
        fields = seg.decode("utf-8", errors="replace").split(sep.decode("utf-8", errors="replace"))
        code = fields[1] if len(fields) > 1 else ""
        control = fields[2] if len(fields) > 2 else ""
    return AckInfo(code, control, tuple(errors), raw)


class MLLPClientProtocol(protocol.Protocol):
    """Sends frames and pairs answers with requests in order."""

    def __init__(self, max_size: int = 64 * 1024 * 1024):
        self.decoder = MLLPDecoder(max_size)
        self._waiting: deque[defer.Deferred] = deque()
        self.lost = defer.Deferred()

    def send(self, payload: bytes) -> defer.Deferred:
        if self.lost.called:  # the peer went away earlier: nothing would ever answer
            return defer.fail(error.ConnectionLost("connection closed before the message was sent"))
        d = defer.Deferred()
        self._waiting.append(d)
        self.transport.write(frame(payload))
        return d

    def dataReceived(self, data: bytes):
        for event in self.decoder.feed(data):
            if isinstance(event, Frame) and self._waiting:
                self._waiting.popleft().callback(event.payload)

    def connectionLost(self, reason=protocol.connectionDone):
        while self._waiting:
            self._waiting.popleft().errback(error.ConnectionLost("connection closed before the ACK"))
        if not self.lost.called:
            self.lost.callback(None)

    def close(self) -> None:
        self.transport.loseConnection()


async def connect(reactor, host: str, port: int, timeout: float = 10.0) -> MLLPClientProtocol:
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    return await connectProtocol(endpoint, MLLPClientProtocol())


def split_messages(data: bytes) -> list[bytes]:
    """Split a file that may hold several messages (each starting with MSH) and any of CR, LF,
    CRLF as segment separator; returns each message with CR separators, as on the wire."""
    lines = [line for line in _SEGMENTS.split(data.lstrip(b"\xef\xbb\xbf")) if line.strip()]
    messages: list[list[bytes]] = []
    for line in lines:
        if line.startswith(b"MSH") or not messages:
            messages.append([])
        messages[-1].append(line)
    return [b"\r".join(m) + b"\r" for m in messages]


def control_id_of(message: bytes) -> str:
    first = _SEGMENTS.split(message, 1)[0]
    fields = first.split(first[3:4]) if first.startswith(b"MSH") else []
    return fields[9].decode("utf-8", errors="replace") if len(fields) > 9 else ""
