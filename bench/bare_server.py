"""The ceiling: an MLLP server that only frames and answers a fixed ACK (no parsing, no storage)."""

from __future__ import annotations

import sys

from twisted.internet import protocol, reactor

from engine.mllp.framing import Frame, MLLPDecoder, frame

ACK = frame(b"MSH|^~\\&|PFI|X|Y|Z|20260101||ACK|1|P|2.5\rMSA|AA|1\r")


class Bare(protocol.Protocol):
    def connectionMade(self):
        self.decoder = MLLPDecoder()

    def dataReceived(self, data):
        for event in self.decoder.feed(data):
            if isinstance(event, Frame):
                self.transport.write(ACK)


if __name__ == "__main__":
    factory = protocol.ServerFactory.forProtocol(Bare)
    port = reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1")
    print("listening", flush=True)
    reactor.run()
