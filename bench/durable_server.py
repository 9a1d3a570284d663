"""The durable reference: the least a Python server must do to ACK only what is on disk.

Twisted MLLP, an MSH scan (MSH-10 for the ACK), one SQLite table in WAL with synchronous=FULL,
group commit in one writer thread (every message that arrived while the previous commit was
syncing goes in the next one), the ACK written only after COMMIT returned. No parsing beyond
MSH, no duplicates check, no routing, no logs: the ceiling our durable intake is measured against.

    python bench/durable_server.py PORT DB_PATH
"""

from __future__ import annotations

import queue
import sqlite3
import sys
import threading

from twisted.internet import protocol, reactor

from engine.mllp.framing import Frame, MLLPDecoder, frame


def control_id(payload: bytes) -> bytes:
    msh = payload.split(b"\r", 1)[0]
    fields = msh.split(msh[3:4]) if len(msh) > 3 else []
    return fields[9] if len(fields) > 9 else b""


def ack_for(ctrl: bytes) -> bytes:
    return frame(b"MSH|^~\\&|REF|X|Y|Z|20260101||ACK|" + ctrl + b"|P|2.5\rMSA|AA|" + ctrl + b"\r")


class GroupWriter(threading.Thread):
    def __init__(self, path: str):
        super().__init__(daemon=True)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS m (id INTEGER PRIMARY KEY, ctrl BLOB, raw BLOB)")

    def run(self):
        while True:
            batch = [self.inbox.get()]
            while not self.inbox.empty():
                batch.append(self.inbox.get_nowait())
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO m (ctrl, raw) VALUES (?, ?)", [(c, raw) for c, raw, _ in batch])
            self.db.execute("COMMIT")
            reactor.callFromThread(self._answer, batch)

    @staticmethod
    def _answer(batch):
        for ctrl, _, transport in batch:
            transport.write(ack_for(ctrl))


class Durable(protocol.Protocol):
    def connectionMade(self):
        self.decoder = MLLPDecoder()

    def dataReceived(self, data):
        for event in self.decoder.feed(data):
            if isinstance(event, Frame):
                self.factory.writer.inbox.put((control_id(event.payload), event.payload, self.transport))


if __name__ == "__main__":
    factory = protocol.ServerFactory.forProtocol(Durable)
    factory.writer = GroupWriter(sys.argv[2])
    factory.writer.start()
    reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1")
    print("listening", flush=True)
    reactor.run()
