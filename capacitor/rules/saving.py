"""Copies on disk that ``save to`` route actions ask for."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from capacitor.logfilters import Phi

LOGGER = logging.getLogger(__name__)


def save_path(template_result: str, base: Path) -> Path | None:
    """Return where a ``save to`` copy goes; None when the path leaves `base`.

    A relative path is taken from `base` (the data folder). An absolute path
    is used as written. A path with a ``..`` component is refused, because
    it could escape the folder its author meant.
    """
    path = Path(template_result)
    if ".." in path.parts or not template_result.strip():
        return None
    return path if path.is_absolute() else base / path


def save_copies(source: Path, paths: list[str], base: Path, sop_instance_uid: str) -> list[Path]:
    """Copy `source` to each path; log and skip a copy that fails, and return the written ones."""
    written = []
    for text in paths:
        target = save_path(text, base)
        if target is None:
            LOGGER.error("Not saving %s to %s: the path must not contain '..'", sop_instance_uid, Phi(repr(text)))
            continue
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, partial)
            os.replace(partial, target)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            LOGGER.error("Saving %s to %s failed: %s", sop_instance_uid, Phi(target), exc)
            continue
        LOGGER.info("Saved a copy of %s to %s", sop_instance_uid, Phi(target))
        written.append(target)
    return written
