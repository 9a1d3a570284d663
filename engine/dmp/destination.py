"""The DMP as an outbound destination: gates first, then the client; results or engine errors.

The route/queue of the engine core can either use the DmpResult (`deliver`) or the engine's
exception tree (`deliver_or_raise`: TransientDeliveryError → retry with the destination's policy,
PermanentDeliveryError → dead letter with the DMP's code).
"""

from __future__ import annotations

from engine.dmp.client import DmpClient
from engine.dmp.config import DmpChannelSettings
from engine.dmp.gates import ConsentRegistry, NotOpposedRegistry, check_publishable
from engine.dmp.model import DmpResult, PublishRequest
from engine.errors import PermanentDeliveryError, TransientDeliveryError


class DmpTransientFailure(TransientDeliveryError):
    """Retry later; `result` holds the DMP's code for the journal."""

    def __init__(self, result: DmpResult):
        self.result = result
        super().__init__(f"DMP {result.error_code}: {result.error_label or result.detail}")


class DmpPermanentFailure(PermanentDeliveryError):
    """Dead letter; `result` holds the code for the journal and the ZAM^Z01 ERR-5."""

    def __init__(self, result: DmpResult):
        self.result = result
        super().__init__(f"DMP {result.error_code}: {result.error_label or result.detail}")


class DmpDestination:
    """One configured DMP channel."""

    def __init__(self, reactor, settings: DmpChannelSettings,
                 consent: ConsentRegistry | None = None, client: DmpClient | None = None):
        self._client = client or DmpClient(reactor, settings)
        self._consent = consent or NotOpposedRegistry()

    async def deliver(self, request: PublishRequest) -> DmpResult:
        """Gate, then publish; every outcome is a DmpResult."""
        decision = check_publishable(request, self._consent)
        if not decision.allowed:
            return decision.as_result()
        return await self._client.publish(request)

    async def deliver_or_raise(self, request: PublishRequest) -> DmpResult:
        """Like `deliver`, but failures raise the engine's delivery errors."""
        result = await self.deliver(request)
        if result.ok:
            return result
        raise (DmpTransientFailure if result.transient else DmpPermanentFailure)(result)

    @property
    def certificate_expiry(self) -> dict:
        """{structure: not-after datetime} of the organisation certificates."""
        return self._client.certificate_expiry

    async def close(self) -> None:
        """Release connections."""
        await self._client.close()
