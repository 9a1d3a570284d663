"""What every destination connector is: `deliver(payload, delivery) -> Outcome`.

The queue (engine/routing/dispatcher.py) does the rest from the outcome: retry timing, dead
letter, pausing a destination, holding a send for its patient's identity, follow-up steps and
the business acks (ZAM) built from the outcome's code.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol


class Action(str, Enum):
    """What the queue does with a delivery after one attempt."""

    DONE = "done"
    RETRY = "retry"
    DEAD = "dead"
    PAUSE = "pause"  # the destination refused our credentials: it waits for an operator
    WAIT_IDENTITY = "wait-identity"  # held until a PAM.fr update qualifies the patient

    def __str__(self) -> str:
        return self.value


#: the code of a failure the destination gave no code for (ZAM ERR-5 in the PFI's own system)
DELIVERY_FAILED = "DELIVERY_FAILED"
#: marks a code of the PFI's own in the journal's text (ZAM ERR-5 coding system 99PFI)
LOCAL_PREFIX = "PFI:"


@dataclass(frozen=True)
class Outcome:
    """One delivery attempt's result. `code` is the remote side's error code (DMP, SMTP, MSA-1)
    or, with `local`, one of the PFI's own refusals; `detail` is the human label (no patient
    data); `attempts` is set by the queue when retries ran out."""

    action: Action
    detail: str = ""
    code: str = ""
    local: bool = False
    attempts: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))  # "dead" and Action.DEAD alike

    @property
    def reason(self) -> str:
        """The journal's text: `[PFI:]CODE: detail`, prefixed when the queue gave up."""
        text = f"{LOCAL_PREFIX if self.local else ''}{self.code}: {self.detail}" if self.code else self.detail
        return f"gave up after {self.attempts} attempts: {text}" if self.attempts else text

    def error(self) -> tuple[str, str, bool]:
        """(code, label, local) for a failure ZAM: a failure without a code is the PFI's own
        DELIVERY_FAILED with the detail as label."""
        code, label, local = (
            (self.code, self.detail, self.local) if self.code else (DELIVERY_FAILED, self.detail[:200], True)
        )
        if self.attempts:
            label = f"{label} (gave up after {self.attempts} attempts)"
        return code, label, local

    def gave_up(self, attempts: int) -> "Outcome":
        return replace(self, action=Action.DEAD, attempts=attempts)


def done(detail: str) -> Outcome:
    return Outcome(Action.DONE, detail)


def refused(code: str, detail: str, local: bool = True) -> Outcome:
    """A dead letter the PFI (local) or the destination refused with a code."""
    return Outcome(Action.DEAD, detail, code, local)


class Connector(Protocol):
    """A destination channel's sending side, one per channel, built by engine/connectors/catalogue.py."""

    async def deliver(self, payload: bytes, delivery) -> Outcome: ...

    async def close(self) -> None: ...


def lane_of(key: str, lanes: int) -> int:
    """The lane (connection) a FIFO key always uses."""
    return zlib.crc32(key.encode("utf-8", "replace")) % lanes
