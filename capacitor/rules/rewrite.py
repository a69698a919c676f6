"""Changed copies of spooled files: mutate, then write back only what changed.

pydicom keeps each element as read (a raw element) until a value is used,
and writes a raw element back byte for byte. Evaluating conditions decodes
some elements, and a decoded element is re-encoded on writing, which may
differ from the received bytes (padding, number formatting). So the
top-level elements are kept as read before the rules run, and every
element that no action changed is put back in that form before writing.
When a mutation changes the Specific Character Set, every text element is
re-encoded in the new set instead, because its bytes must change with it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from capacitor.rules import model as m
from capacitor.rules.ruleset import MutationResult, RuleSet
from capacitor.rules.values import RuleContext

LOGGER = logging.getLogger(__name__)

# Values larger than this are read from the file only when written out.
DEFER_SIZE = "512 KB"

Originals = dict[int, DataElement | RawDataElement]


@dataclass
class MutatedFile:
    """A spooled file read, mutated for one destination, and ready to write."""

    dataset: Dataset
    result: MutationResult
    originals: Originals


def read_instance(path: Path) -> tuple[Dataset, Originals]:
    """Read `path` lazily and keep each top-level element as read."""
    dataset = dcmread(path, defer_size=DEFER_SIZE, force=True)
    originals: Originals = {int(tag): dataset.get_item(tag) for tag in dataset.keys()}
    return dataset, originals


def mutate_file(
    rules: RuleSet,
    path: Path,
    context: RuleContext,
    destination: str | None,
    phase: str = m.STORAGE_PHASE,
) -> MutatedFile:
    """Read `path` and apply the mutate rules for `destination`; the file is not changed."""
    dataset, originals = read_instance(path)
    result = rules.mutate(dataset, context, phase, destination)
    return MutatedFile(dataset, result, originals)


def restore_untouched(mutated: MutatedFile) -> None:
    """Put back the elements as read wherever no action changed them."""
    if mutated.result.charset_changed:
        return
    dataset = mutated.dataset
    for tag in list(dataset.keys()):
        original = mutated.originals.get(int(tag))
        if original is not None and int(tag) not in mutated.result.touched:
            dataset[tag] = original


def _sync_file_meta(dataset: Dataset) -> None:
    """Keep the Media Storage UIDs of the file meta equal to the dataset's (PS3.10 7.1)."""
    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        return
    for meta_keyword, keyword in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        value = dataset.get(keyword)
        if value and meta.get(meta_keyword) != value:
            setattr(meta, meta_keyword, value)


def write_copy(mutated: MutatedFile, folder: Path) -> Path:
    """Write the mutated dataset into `folder` under a new name and return its path.

    The file keeps the transfer syntax of the file it was read from.
    """
    restore_untouched(mutated)
    _sync_file_meta(mutated.dataset)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.dcm"
    partial = path.with_suffix(".part")
    try:
        mutated.dataset.save_as(partial, enforce_file_format=False)
        partial.rename(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def mutated_copy(
    rules: RuleSet,
    path: Path,
    context: RuleContext,
    destination: str,
    folder: Path,
) -> Path | None:
    """Return a changed copy of `path` for `destination` in `folder`, or None when nothing changes."""
    if not rules.mutate_rules(m.STORAGE_PHASE, destination):
        return None
    mutated = mutate_file(rules, path, context, destination)
    if not mutated.result.changed:
        return None
    copy = write_copy(mutated, folder)
    LOGGER.info(
        "Mutated %s for %s by %s",
        mutated.dataset.get("SOPInstanceUID", path.name),
        destination,
        ", ".join(repr(name) for name in mutated.result.matched),
    )
    return copy
