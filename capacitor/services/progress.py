"""Sub-operation counts of a C-MOVE or C-GET and the responses that carry them.

Per PS3.4 C.4.2.1.5 and C.4.3.1.4, pending responses (0xFF00) carry the
Remaining, Completed, Failed and Warning counts. The final response carries
Completed, Failed and Warning. When any sub-operation failed, its identifier
contains the Failed SOP Instance UID List (0008,0058).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from io import BytesIO
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext

LOGGER = logging.getLogger(__name__)

PENDING = 0xFF00
SUCCESS = 0x0000
CANCEL = 0xFE00
WARNING = 0xB000
UNABLE_TO_PERFORM = 0xA702
UNKNOWN_DESTINATION = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UPSTREAM_UNREACHABLE = 0xC001
UPSTREAM_ABORTED = 0xC002
# Unable to process: Capacitor itself failed on the request.
PROCESSING_FAILED = 0xC000

_MAX_COMMENT = 64


@dataclass
class Counts:
    """Sub-operations as far as Capacitor has observed them."""

    remaining: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    def fail(self, sop_instance_uid: str) -> None:
        self.failed += 1
        if sop_instance_uid and sop_instance_uid not in self.failed_uids:
            self.failed_uids.append(sop_instance_uid)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.remaining, self.completed, self.failed, self.warning)

    def unfinished(self) -> Counts:
        """Return these counts with every sub-operation not reported done as failed."""
        return Counts(
            0,
            self.completed,
            self.failed + self.remaining,
            self.warning,
            self.failed_uids,
        )

    def final_code(self) -> int:
        """Return the final status these counts call for."""
        if self.failed and not (self.completed or self.warning):
            return UNABLE_TO_PERFORM
        if self.failed or self.warning:
            return WARNING
        return SUCCESS


def upstream_counts(status: Dataset, previous: Counts) -> Counts:
    """Read the counts of an upstream response, keeping earlier ones it leaves out."""
    counts = Counts(failed_uids=list(previous.failed_uids))
    for name, keyword in (
        ("remaining", "NumberOfRemainingSuboperations"),
        ("completed", "NumberOfCompletedSuboperations"),
        ("failed", "NumberOfFailedSuboperations"),
        ("warning", "NumberOfWarningSuboperations"),
    ):
        value = status.get(keyword)
        setattr(counts, name, getattr(previous, name) if value is None else int(value))
    return counts


def failed_uids(identifier: Dataset | None) -> list[str]:
    """Return the Failed SOP Instance UID List of a response identifier, if any."""
    if identifier is None or "FailedSOPInstanceUIDList" not in identifier:
        return []
    value = identifier.FailedSOPInstanceUIDList
    values = [value] if isinstance(value, str) else list(value or ())
    return [str(uid) for uid in values if str(uid)]


class Responder:
    """Send C-MOVE-RSP or C-GET-RSP messages for one request on the inbound association."""

    def __init__(
        self,
        dimse: DIMSEServiceProvider,
        context: PresentationContext,
        request: C_MOVE | C_GET,
    ) -> None:
        self.dimse = dimse
        self.context = context
        self.request = request
        self.sent_pending: tuple[int, int, int, int] | None = None
        self.finished = False

    def pending(self, counts: Counts) -> None:
        """Send a pending response if the counts changed since the last one."""
        if counts.as_tuple() == self.sent_pending:
            return
        self.sent_pending = counts.as_tuple()
        self._send(PENDING, counts, final=False)

    def final(
        self, code: int, counts: Counts | None = None, comment: str | None = None
    ) -> None:
        """Send the final response; it marks the request finished."""
        self.finished = True
        self._send(code, counts or Counts(), final=True, comment=comment)

    def _send(
        self, code: int, counts: Counts, final: bool, comment: str | None = None
    ) -> None:
        response = C_MOVE() if isinstance(self.request, C_MOVE) else C_GET()
        response.MessageIDBeingRespondedTo = self.request.MessageID
        response.AffectedSOPClassUID = self.request.AffectedSOPClassUID
        response.Status = code
        if not final or code == CANCEL:
            response.NumberOfRemainingSuboperations = counts.remaining
        response.NumberOfCompletedSuboperations = counts.completed
        response.NumberOfFailedSuboperations = counts.failed
        response.NumberOfWarningSuboperations = counts.warning
        if comment and code not in (PENDING, SUCCESS):
            response.ErrorComment = comment[:_MAX_COMMENT]  # type: ignore[assignment]
        if final and counts.failed_uids:
            identifier = Dataset()
            identifier.FailedSOPInstanceUIDList = counts.failed_uids
            syntax = self.context.transfer_syntax[0]
            response.Identifier = BytesIO(
                encode(identifier, syntax.is_implicit_VR, syntax.is_little_endian)
                or b""
            )
        self.dimse.send_msg(response, cast(int, self.context.context_id))
