"""Send an ACK at once instead of through Twisted's write buffer.

`transport.write` buffers the bytes, registers the socket for writability (epoll_ctl), waits one
more reactor turn for epoll to say it is writable, sends, then unregisters (epoll_ctl again): per
ACK two system calls and a reactor iteration of Python on the GIL that intake shares with the
journal writer. An ACK is small and the socket's send buffer is nearly always empty, so when the
transport holds nothing unsent we `send()` right away; whatever the kernel does not take (or an
error) goes through `transport.write` as before, after nothing, so the order of the bytes holds
and Twisted still reports the error or drains the rest. Plain TCP transports only: TLS and test
transports always take `transport.write`.
"""

from __future__ import annotations

from twisted.internet import tcp


def write_now(transport, data: bytes) -> None:
    if data and _idle_plain_tcp(transport):
        try:
            sent = transport.socket.send(data)
        except OSError:  # EAGAIN, or an error Twisted reports when it writes the rest
            sent = 0
        data = data[sent:]
    if data:
        transport.write(data)


def _idle_plain_tcp(transport) -> bool:
    """A connected plain TCP transport with nothing buffered, not closing. The buffer's fields are
    Twisted's own (abstract.FileDescriptor): should a Twisted release rename them, every ACK simply
    takes `transport.write` again."""
    try:
        return (
            isinstance(transport, tcp.Connection)
            and not transport.TLS
            and transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnected
            and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
        )
    except AttributeError:
        return False
