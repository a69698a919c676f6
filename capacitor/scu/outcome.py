"""What a C-STORE response status means for a delivery, and when to try again."""

from __future__ import annotations

import random
from dataclasses import dataclass

from capacitor.spool.index import DELIVERED, REJECTED, RETRYING

# Warning statuses of the Storage Service Class (PS3.4 B.2.3): stored, with a note.
WARNING_STATUSES = {0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class Outcome:
    """The result of one delivery attempt."""

    state: str
    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.state == DELIVERED


def classify(status: int | None, comment: str | None = None) -> Outcome:
    """Map a C-STORE response status to a delivery state.

    * 0x0000: delivered
    * 0xB000, 0xB006, 0xB007 (and other 0xBxxx warnings): delivered, the warning kept
    * 0xA7xx (out of resources): retried, the destination may recover
    * any other status (0xA9xx, 0xCxxx, 0x01xx, ...): rejected and kept in the spool
    * no status at all (abort, timeout): retried
    """
    if status is None:
        return Outcome(RETRYING, None, comment or "no response from the destination")
    detail = f"status 0x{status:04X}" + (f": {comment}" if comment else "")
    if status == 0x0000:
        return Outcome(DELIVERED, status, None)
    if status in WARNING_STATUSES or status & 0xF000 == 0xB000:
        return Outcome(DELIVERED, status, f"warning {detail}")
    if status & 0xFF00 == 0xA700:
        return Outcome(RETRYING, status, f"out of resources, {detail}")
    return Outcome(REJECTED, status, f"rejected, {detail}")


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Return seconds before retry number `attempt` (1 = first retry).

    The delay doubles from `initial` up to `maximum`, with up to 20% random
    jitter either way so that many queued instances do not retry in lockstep;
    the jitter never takes it above `maximum`.
    """
    if initial <= 0:
        return 0.0
    base = min(initial * (2 ** min(max(attempt - 1, 0), 32)), maximum)
    return min(base * random.uniform(0.8, 1.2), maximum)
