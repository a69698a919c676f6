"""Fill an empty data folder with the shipped config.yml and example rules.

``capacitor run --write-defaults`` does this before it loads the
configuration, so that a container started on an empty ``/data`` volume
comes up on the defaults and leaves files there to edit.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from capacitor.config.loader import CONFIG_FILE
from capacitor.resources import resource_dir, resource_path
from capacitor.rules.engine import RULE_SUFFIX

LOGGER = logging.getLogger(__name__)

RULES_FOLDER = "rules"


def write_defaults(data_dir: Path) -> list[Path]:
    """Write config.yml and rules/ into `data_dir` when it has no config.yml; return what was written.

    A data folder that has a config.yml is left as it is. An existing
    rules folder is kept, even when config.yml is written.

    Raises
    ------
    OSError
        If the folder or a file cannot be written, for example because the
        folder belongs to another user.
    """
    config = data_dir / CONFIG_FILE
    if config.exists():
        return []
    data_dir.mkdir(parents=True, exist_ok=True)
    written = [_copy_atomically(resource_path("defaults", CONFIG_FILE), config)]
    rules = data_dir / RULES_FOLDER
    if not rules.exists():
        rules.mkdir()
        for source in sorted(resource_dir("default_rules").glob(f"*{RULE_SUFFIX}")):
            written.append(_copy_atomically(source, rules / source.name))
    return written


def _copy_atomically(source: Path, target: Path) -> Path:
    """Copy `source` to `target` through a temporary name, so a crash leaves no half file."""
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)
    return target
