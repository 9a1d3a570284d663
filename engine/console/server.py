"""The console process: its site on the configured address (TLS when configured), the key indexer
every second, the journal read from outside the engine (docs/console.md for why a process)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import structlog
from twisted.internet import defer, task, threads

from engine.console.data import ConsoleData
from engine.console.indexer import KeyIndexer
from engine.console.metricsfeed import MetricsFeed
from engine.console.web import ConsoleResource
from engine.journal.access import open_access

log = structlog.get_logger(__name__)
INDEX_EVERY = 1.0


def plaintext_refused(settings) -> str | None:
    """A console on a non-loopback address without TLS would send passwords and health data in clear."""
    if settings.tls is not None:
        return None
    try:
        if ipaddress.ip_address(settings.host).is_loopback:
            return None
    except ValueError:
        if settings.host == "localhost":
            return None
    return f"console.host {settings.host} is not a loopback address: configure console.tls (certificate, key)"


def metrics_url(config) -> str:
    console, metrics = config.engine.console, config.engine.metrics
    if console is not None and console.metrics_url:
        return console.metrics_url
    if not metrics.enabled:
        return ""
    host = "127.0.0.1" if metrics.host in ("0.0.0.0", "") else metrics.host
    return f"http://{host}:{metrics.port}/metrics"


class ConsoleServer:
    def __init__(self, config, data_dir: Path, reactor, settings=None):
        from engine.config.engine import ConsoleSettings

        self.settings = settings or config.engine.console or ConsoleSettings()
        self.reactor = reactor
        self.access = open_access(config.engine.journal, data_dir)
        self.indexer = KeyIndexer(self.access)
        self.metrics = MetricsFeed(reactor, metrics_url(config))
        self.resource = ConsoleResource(
            ConsoleData(config, self.access), self.settings, reactor, metrics=self.metrics, indexer=self.indexer
        )
        self.port = None
        self._indexing = task.LoopingCall(self._index)
        self._indexing.clock = reactor
        self._busy = False

    def site(self):
        from twisted.web.server import Site

        site = Site(self.resource)
        site.displayTracebacks = False
        site.sessionFactory = None  # twisted's own sessions are not used: ours are in sessions.py
        return site

    async def start(self) -> int:
        from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint

        s = self.settings
        if s.tls is not None:
            from engine.tls import server_context

            endpoint = SSL4ServerEndpoint(self.reactor, s.port, server_context(s.tls), interface=s.host)
        else:
            endpoint = TCP4ServerEndpoint(self.reactor, s.port, interface=s.host)
        self.port = await endpoint.listen(self.site())
        bound = self.port.getHost().port
        log.info("console.started", host=s.host, port=bound, tls=s.tls is not None, journal=self.access.dialect)
        self._indexing.start(INDEX_EVERY, now=True)
        return bound

    def _index(self):
        if self._busy:
            return None
        self._busy = True
        d = threads.deferToThread(self.indexer.run_pass)
        d.addErrback(lambda f: log.warning("console.index_failed", error=f.getErrorMessage()))
        d.addBoth(lambda _: setattr(self, "_busy", False))
        return d

    async def stop(self) -> None:
        if self._indexing.running:
            self._indexing.stop()
        if self.port is not None:
            await defer.maybeDeferred(self.port.stopListening)
        await threads.deferToThread(self.access.close)
