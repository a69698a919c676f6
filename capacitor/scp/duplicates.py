"""The duplicate policy: an instance whose SOP Instance UID was received before.

Files in the spool are named by random ids, so no copy ever overwrites
another. The policy only decides whether a new copy is stored and
delivered again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from capacitor.config.loader import Config, parse_duration
from capacitor.spool.store import Spool

LOGGER = logging.getLogger(__name__)

KEEP = "keep"
DISCARD_IDENTICAL = "discardIdentical"
REJECT = "reject"

_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """Return the SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Verdict:
    """The decision on one received copy."""

    action: str  # "store", "discard" or "reject"
    digest: str | None = None
    reason: str = ""


def _previous_digest(spool: Spool, instance_id: int, relative: str | None, known: str | None) -> str | None:
    if known:
        return known
    if relative is None:
        return None
    path = spool.absolute(relative)
    try:
        digest = file_digest(path)
    except FileNotFoundError:
        return None
    spool.index.set_content_hash(instance_id, digest)
    return digest


def judge(spool: Spool, config: Config, sop_instance_uid: str, received: Path) -> Verdict:
    """Apply ``duplicateBehavior`` to a copy just received."""
    behavior = config["duplicateBehavior"]
    since = time.time() - parse_duration(config["duplicateThreshold"])
    previous = spool.index.previous_copies(sop_instance_uid, since)
    digest = file_digest(received) if behavior == DISCARD_IDENTICAL or previous else None
    if not previous:
        return Verdict("store", digest)
    if behavior == REJECT:
        return Verdict("reject", digest, "received before within duplicateThreshold")
    earlier = [_previous_digest(spool, instance_id, relative, known) for instance_id, relative, known in previous]
    identical = digest in earlier
    if identical and behavior == DISCARD_IDENTICAL:
        return Verdict("discard", digest, "identical to a copy received before")
    if identical:
        return Verdict("store", digest, "identical to a copy received before; delivered again")
    if None in earlier:
        # With duplicateBehavior keep, a first copy is not hashed, and its file
        # is deleted once delivered, so there is nothing left to compare.
        return Verdict("store", digest, "received before, and the earlier copy was already delivered; delivered again")
    return Verdict("store", digest, "differs from a copy received before; both are kept")
