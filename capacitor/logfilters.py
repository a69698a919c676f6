"""Filters of the log handler: association context, suppression, redaction.

They run in the thread that writes the record. pynetdicom runs each
inbound association in two threads of its own, so a record written in one
of them belongs to that association.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

if TYPE_CHECKING:
    from capacitor.logs import LogSettings

# A quoted stretch of text: how pydicom (``Invalid value for VR PN: 'DOE^JOHN'``),
# OSError and MutationError messages show a value.
_QUOTED = re.compile(r"\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'")
MASK = "'***'"
WITHHELD = "[withheld]"

# Loggers of other libraries whose whole message may carry attribute values.
_LIBRARY_LOGGERS = ("pydicom", "pynetdicom", "py.warnings")


class Phi(str):
    """A log argument that carries patient data, such as a path built from attribute values.

    With ``redactedLogging`` on it is logged as ``[withheld]``.
    """


def fold_ae(title: str, case_sensitive: bool) -> str:
    """Return `title` as AE titles compare: spaces stripped, upper-cased unless case counts."""
    title = title.strip(" ")
    return title if case_sensitive else title.upper()


def scrub(text: str) -> str:
    """Replace every quoted value in `text` with ``'***'``."""
    return _QUOTED.sub(MASK, text)


def association_fields() -> dict[str, str]:
    """Return the AE titles and address of the inbound association of this thread, if any."""
    thread = threading.current_thread()
    # pynetdicom decodes PDUs and logs received DIMSE messages in the
    # association's DUL thread, and runs the service handlers in the
    # association's own thread.
    assoc = thread.assoc if isinstance(thread, DULServiceProvider) else thread
    if not isinstance(assoc, Association) or not assoc.is_acceptor:
        return {}
    primitive = assoc.requestor.primitive
    if primitive is None:
        calling = _requested_calling_ae.get(assoc)
        return {"calling_ae": calling} if calling is not None else {}
    return {
        "calling_ae": str(primitive.calling_ae_title).strip(" "),
        "called_ae": str(primitive.called_ae_title).strip(" "),
        "calling_ip": str(assoc.requestor.address),
    }


# Calling AE title of each A-ASSOCIATE-RQ, read from its raw bytes, because
# pynetdicom logs the decoded request (at DEBUG) before it sets the
# association's requestor primitive.
_requested_calling_ae: weakref.WeakKeyDictionary[Association, str] = weakref.WeakKeyDictionary()


def note_calling_ae(event: evt.Event) -> None:
    """EVT_DATA_RECV handler: keep the calling AE title of an A-ASSOCIATE-RQ (PS3.8 9.3.2)."""
    data: bytes = event.data
    if len(data) >= 42 and data[0] == 0x01:
        _requested_calling_ae[event.assoc] = data[26:42].decode("ascii", "replace").strip(" ")


class AssociationContext(logging.Filter):
    """Add the inbound association's AE titles to the record's ``context``.

    Fields given with ``extra=logs.context(...)`` take precedence.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        explicit = getattr(record, "context", None) or {}
        fields = association_fields()
        if fields:
            record.context = {**fields, **explicit}
        return True


class Suppress(logging.Filter):
    """Drop DEBUG and INFO records whose calling AE title is in ``suppressLogAeTitles``."""

    def __init__(self, settings: Callable[[], LogSettings]) -> None:
        super().__init__()
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        settings = self.settings()
        if record.levelno >= logging.WARNING or not settings.suppressed:
            return True
        calling = (getattr(record, "context", None) or {}).get("calling_ae")
        if calling is None:
            return True
        return fold_ae(str(calling), settings.case_sensitive) not in settings.suppressed


class Redact(logging.Filter):
    """With ``redactedLogging`` on, remove attribute values from the record.

    Messages of pydicom, pynetdicom and Python warnings are scrubbed whole.
    In Capacitor's own records the format string is kept, text and exception
    arguments are scrubbed, and ``Phi`` arguments are withheld. Traceback
    text is scrubbed as well.
    """

    def __init__(self, settings: Callable[[], LogSettings]) -> None:
        super().__init__()
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.settings().redacted:
            return True
        if _from_library(record.name):
            record.msg = scrub(record.getMessage())
            record.args = None
        elif isinstance(record.args, tuple):
            record.args = tuple(_redact_argument(arg) for arg in record.args)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


def _from_library(name: str) -> bool:
    return any(name == library or name.startswith(f"{library}.") for library in _LIBRARY_LOGGERS)


def _redact_argument(argument: Any) -> Any:
    if isinstance(argument, Phi):
        return WITHHELD
    if isinstance(argument, str):
        return scrub(argument)
    if isinstance(argument, BaseException):
        return scrub(str(argument))
    return argument
