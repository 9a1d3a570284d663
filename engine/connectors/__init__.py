"""Destination connectors, one module per channel kind, and the catalogue of channel types
(engine/connectors/catalogue.py). Every connector answers `deliver(payload, delivery) -> Outcome`."""

from engine.connectors.base import Action, Connector, Outcome

__all__ = ["Action", "Connector", "Outcome"]
