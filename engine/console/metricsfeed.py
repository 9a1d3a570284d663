"""Live figures the journal does not hold (open connections, listeners, certificate days) read
from the engine's Prometheus endpoint: at most one scrape per INTERVAL whatever the number of
browsers polling the dashboard, so the console costs the engine the same with one or ten."""

from __future__ import annotations

import time

from twisted.internet import defer

INTERVAL = 1.0
TIMEOUT = 2.0


class MetricsFeed:
    def __init__(self, reactor, url: str):
        self.reactor, self.url = reactor, url
        self.samples: dict[tuple, float] = {}
        self.previous: dict[tuple, float] = {}
        self.taken_at = 0.0
        self.previous_at = 0.0
        self.error = "" if url else "no metrics endpoint configured (metrics.enabled is false)"
        self._pending: defer.Deferred | None = None

    def refresh(self) -> defer.Deferred:
        """Fires when the figures are at most INTERVAL old (one scrape shared by every caller)."""
        if not self.url or time.monotonic() - self.taken_at < INTERVAL:
            return defer.succeed(None)
        if self._pending is None:
            self._pending = defer.ensureDeferred(self._scrape())
            self._pending.addBoth(self._scraped)
        waiter = defer.Deferred()
        self._pending.addBoth(lambda result: (waiter.callback(None), result)[1])
        return waiter

    def _scraped(self, result):
        self._pending = None
        return None

    async def _scrape(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families
        from twisted.web.client import Agent, readBody

        try:
            response = await Agent(self.reactor, connectTimeout=TIMEOUT).request(b"GET", self.url.encode())
            body = await readBody(response)
            samples = {}
            for family in text_string_to_metric_families(body.decode("utf-8", "replace")):
                for s in family.samples:
                    labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "node"))
                    samples[(s.name, labels)] = s.value
        except Exception as exc:  # engine down or metrics off: the dashboard says so
            self.error = f"engine metrics unreachable at {self.url}: {type(exc).__name__}"
            self.samples, self.taken_at = {}, time.monotonic()
            return
        self.error = ""
        self.previous, self.previous_at = self.samples, self.taken_at
        self.samples, self.taken_at = samples, time.monotonic()

    def value(self, name: str, **labels) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def total(self, name: str, **labels) -> float:
        """Sum over the series of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= set(ls))

    def rate(self, name: str, **labels) -> float | None:
        """Per second between the last two scrapes (None until there are two)."""
        if not self.previous or self.taken_at <= self.previous_at:
            return None
        wanted = set(labels.items())
        before = sum(v for (n, ls), v in self.previous.items() if n == name and wanted <= set(ls))
        return max(self.total(name, **labels) - before, 0.0) / (self.taken_at - self.previous_at)
