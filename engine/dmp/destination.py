"""The DMP as an outbound destination: gates first, then the client; every outcome a DmpResult
(engine/connectors.py maps it onto the queue's outcome: done, retry, dead, pause, wait-identity).
"""

from __future__ import annotations

from engine.dmp.client import DmpClient
from engine.dmp.config import DmpChannelSettings
from engine.dmp.gates import ConsentRegistry, NotOpposedRegistry, check_publishable
from engine.dmp.model import DmpResult, PublishRequest


class DmpDestination:
    """One configured DMP channel."""

    def __init__(
        self,
        reactor,
        settings: DmpChannelSettings,
        consent: ConsentRegistry | None = None,
        client: DmpClient | None = None,
    ):
        self._client = client or DmpClient(reactor, settings)
        self._consent = consent or NotOpposedRegistry()

    async def deliver(self, request: PublishRequest) -> DmpResult:
        """Gate, then publish; every outcome is a DmpResult."""
        decision = check_publishable(request, self._consent)
        if not decision.allowed:
            return decision.as_result()
        return await self._client.publish(request)

    def gate(self, request: PublishRequest):
        """The gate's decision alone (no DMP call): whether `request` may be published now."""
        return check_publishable(request, self._consent)

    @property
    def certificate_expiry(self) -> dict:
        """{structure: not-after datetime} of the organisation certificates."""
        return self._client.certificate_expiry

    async def close(self) -> None:
        """Release connections."""
        await self._client.close()
