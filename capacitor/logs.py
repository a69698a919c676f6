"""Logging setup for the command line: text or JSON lines on standard error.

Every module logs through ``logging.getLogger(__name__)``. ``configure``
installs one handler on the root logger. Its filters (capacitor.logfilters)
add the AE titles of the association a record was written in, drop the
DEBUG and INFO records of the calling AE titles in ``suppressLogAeTitles``,
and remove attribute values when ``redactedLogging`` is on. ``configure``
runs again after each reload and changes the handler in place.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from pynetdicom import _config

from capacitor.logfilters import AssociationContext, Redact, Suppress, fold_ae

if TYPE_CHECKING:
    from capacitor.spool.index import Delivery

_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Control characters, which received values may carry into a message.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ESCAPES = {"\n": "\\n", "\r": "\\r"}

_handler: logging.Handler | None = None


@dataclass(frozen=True)
class LogSettings:
    """The logging settings of one configuration."""

    level: str = "INFO"
    format: str = "text"
    redacted: bool = False
    suppressed: frozenset[str] = frozenset()
    case_sensitive: bool = True

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> LogSettings:
        case_sensitive = bool(settings.get("aeTitleCaseSensitive", True))
        titles = settings.get("suppressLogAeTitles", [])
        return cls(
            level=str(settings.get("logLevel", "INFO")),
            format=str(settings.get("logFormat", "text")),
            redacted=bool(settings.get("redactedLogging", False)),
            suppressed=frozenset(fold_ae(title, case_sensitive) for title in titles),
            case_sensitive=case_sensitive,
        )


def escape_controls(text: str) -> str:
    """Return `text` with line breaks and other control characters written as escapes (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(lambda found: _ESCAPES.get(found.group(), f"\\x{ord(found.group()):02x}"), text)


class TextFormatter(logging.Formatter):
    """Format a record as one line of text, whatever its message contains.

    A UID or name received from a peer may contain line breaks. Written as
    they are, it could add a line that looks like the router's own.
    """

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object on one line, for container log collectors.

    Keys: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, the
    fields of the record's ``context`` (``sop_instance_uid``, ``calling_ae``,
    ``called_ae``, ``calling_ip``, ``node``, ...) and ``exception``.
    """

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, tz=UTC)
        entry: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "context", None) or {})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


_settings = LogSettings()


def context(**fields: object) -> dict[str, Any]:
    """Return the ``extra`` argument of a log call about an instance or association.

    JSON lines carry each field that is not None, and the suppression filter
    reads ``calling_ae``.
    """
    return {"context": {key: value for key, value in fields.items() if value is not None}}


def delivery_context(delivery: Delivery, node: str) -> dict[str, Any]:
    """Return the ``extra`` argument of a log call about one delivery to `node`."""
    return context(
        sop_instance_uid=delivery.sop_instance_uid,
        calling_ae=delivery.calling_ae,
        called_ae=delivery.called_ae,
        node=node,
    )


def configure(settings: LogSettings | None = None, stream: IO[str] | None = None) -> None:
    """Send log records to standard error as `settings` ask; apply again after a reload.

    pynetdicom logs every association and DIMSE message at INFO; its own
    lines are shown from WARNING up unless the level is DEBUG. With
    redaction on they stay at WARNING even then, because pynetdicom's DEBUG
    output prints query identifiers.
    """
    global _handler, _settings
    settings = settings or LogSettings()
    _settings = settings
    root = logging.getLogger()
    if _handler is None or _handler not in root.handlers:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        _handler = _new_handler(stream or sys.stderr)
        root.addHandler(_handler)
        _capture_warnings()
    _handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    root.setLevel(settings.level)
    protocol_log = settings.level == "DEBUG" and not settings.redacted
    logging.getLogger("pynetdicom").setLevel("DEBUG" if protocol_log else "WARNING")
    # pynetdicom binds handlers that format a line for every PDU and DIMSE
    # message to each new association. They log below WARNING only, so they are
    # left unbound unless those lines are shown.
    _config.LOG_HANDLER_LEVEL = "standard" if protocol_log else "none"
    # watchfiles logs "1 change detected" at INFO; capacitor.reload logs what it did.
    logging.getLogger("watchfiles").setLevel("WARNING")


def is_configured() -> bool:
    """Return whether ``configure`` installed the handler (the command line does)."""
    return _handler is not None and _handler in logging.getLogger().handlers


def current() -> LogSettings:
    """Return the logging settings in force; the filters read them on every record."""
    return _settings


def _new_handler(stream: IO[str]) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    # Order matters: suppression reads the AE titles that the first filter adds.
    handler.addFilter(AssociationContext())
    handler.addFilter(Suppress(current))
    handler.addFilter(Redact(current))
    return handler


def _capture_warnings() -> None:
    """Log Python warnings instead of printing them raw on standard error.

    pydicom 3 sends every warning to its ``pydicom`` logger as well as to
    ``warnings.warn`` (``pydicom.misc.warn_and_log``), so the warnings copy
    is ignored to log each one once.
    """
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
