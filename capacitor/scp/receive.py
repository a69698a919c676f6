"""Stream received C-STORE datasets into the spool's incoming folder.

pynetdicom can write a C-STORE dataset to a temporary file fragment by
fragment (``STORE_RECV_CHUNKED_DATASET``), so an instance of any size is
never held whole in memory. It creates that file with ``NamedTemporaryFile``
in the system temp folder; here the file is created in the spool's incoming
folder instead, on the same file system as the spool, so that accepting it
is a rename. pynetdicom leaves the file behind when an association aborts
mid-transfer, so the abort and close handlers delete it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import IO, Any

from pynetdicom import _config, dimse_messages, evt

LOGGER = logging.getLogger(__name__)

_incoming: Path | None = None


def _named_temporary_file(*args: Any, **kwargs: Any) -> IO[bytes]:
    if _incoming is not None:
        kwargs["dir"] = _incoming
        kwargs.setdefault("prefix", "rx-")
    return tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115


def install(incoming: Path) -> None:
    """Make pynetdicom stream received datasets into `incoming` and send files unparsed.

    NOTE: this replaces ``pynetdicom.dimse_messages.NamedTemporaryFile``, a
    module attribute of pynetdicom 3.0; the test of partial-transfer cleanup
    fails if a later version stops using it.
    """
    global _incoming
    _incoming = incoming
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.STORE_SEND_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _named_temporary_file  # type: ignore[attr-defined]


def discard_partial(event: evt.Event) -> None:
    """Delete the file of a C-STORE that was still arriving when the association ended."""
    dimse = getattr(event.assoc, "dimse", None)
    message = getattr(dimse, "message", None)
    handle = getattr(message, "_data_set_file", None)
    if handle is None:
        return
    path = Path(handle.name)
    try:
        handle.close()
    except OSError:
        pass
    path.unlink(missing_ok=True)
    message._data_set_file = None  # noqa: SLF001
    LOGGER.info("Removed partial instance %s left by an interrupted association", path.name)


def handlers() -> list[tuple[evt.EventType, Any]]:
    return [(evt.EVT_ABORTED, discard_partial), (evt.EVT_CONN_CLOSE, discard_partial)]
