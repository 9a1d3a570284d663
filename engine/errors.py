"""The engine's small exception tree.

Configuration problems stop a start; parse and validation problems turn into a NACK or a
quarantined message; delivery problems are either transient (retry) or permanent (dead letter).
"""


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigurationError(EngineError):
    """The configuration is invalid; carries every problem found, not only the first."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ParseError(EngineError):
    """Input could not be understood (framing, MSH, encoding)."""


class ValidationError(EngineError):
    """Input was understood but breaks a rule (profile, CDA XSD or Schematron, consistency)."""


class DeliveryError(EngineError):
    """A destination did not take the message."""


class TransientDeliveryError(DeliveryError):
    """Worth retrying later: connection refused, timeout, AE, HTTP 5xx."""


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help: the message goes to dead letter with this reason."""


class JournalError(EngineError):
    """The journal could not store or read; intake answers AE so that the sender retries."""
