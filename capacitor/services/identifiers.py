"""Query identifiers: return keys, rule phases and response status datasets.

Identifiers are relayed as pydicom decoded them, and every element keeps its
raw bytes until a rule changes it. Encoded again in the transfer syntax it
arrived in, an unchanged identifier is byte-identical to the one received,
including DA and TM range values and ISO 2022 escape sequences, which are
never validated on the way through.
"""

from __future__ import annotations

import copy
import logging
from io import BytesIO

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pynetdicom.dsutils import decode, encode

from capacitor.rules.engine import MutationResult, RuleSet
from capacitor.rules.values import RuleContext
from capacitor.scp.negotiation import Peer

LOGGER = logging.getLogger(__name__)

SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
QUERY_RETRIEVE_LEVEL = Tag(0x0008, 0x0052)

# ErrorComment (0000,0902) is LO: at most 64 characters.
_MAX_COMMENT = 64

Encoding = tuple[bool, bool]  # (is implicit VR, is little endian)


def status(code: int, comment: str | None = None) -> Dataset:
    """Return a response status dataset, with an ErrorComment when given."""
    dataset = Dataset()
    dataset.Status = code
    if comment:
        dataset.ErrorComment = comment[:_MAX_COMMENT]
    return dataset


def to_bytes(dataset: Dataset, encoding: Encoding) -> bytes | None:
    """Encode `dataset`; return None when pydicom cannot encode it."""
    return encode(dataset, encoding[0], encoding[1])


def from_bytes(data: bytes, encoding: Encoding) -> Dataset:
    return decode(BytesIO(data), encoding[0], encoding[1])


def complete_return_keys(response: Dataset, query: Dataset) -> list[str]:
    """Add every key of `query` that `response` lacks, zero-length (PS3.4 C.4.1).

    A requested sequence is completed item by item when the query gives it
    an item of keys. A missing Query/Retrieve Level is copied from the query.
    Returns the keywords or tags that were added, for the debug log.
    """
    added: list[str] = []
    # keys() gives the tags; iterating a Dataset would decode every element.
    for tag in list(query.keys()):
        if tag.group == 0x0000 or tag == SPECIFIC_CHARACTER_SET:
            continue
        key = query[tag]
        if tag not in response:
            response.add(_empty_like(key))
            added.append(key.keyword or str(tag))
            continue
        if key.VR == "SQ" and key.value:
            item_query = key.value[0]
            value = response[tag].value
            for item in value or ():
                added += [
                    f"{key.keyword}>{name}"
                    for name in complete_return_keys(item, item_query)
                ]
    return added


def _empty_like(key: DataElement) -> DataElement:
    if key.tag == QUERY_RETRIEVE_LEVEL:
        return DataElement(key.tag, key.VR, key.value)
    if key.VR == "SQ":
        return DataElement(key.tag, "SQ", Sequence())
    return DataElement(key.tag, key.VR, None)


def apply_rules(
    rules: RuleSet,
    dataset: Dataset,
    peer: Peer,
    phase: str,
    destination: str,
) -> MutationResult:
    """Run the mutate rules of `phase` on `dataset` for the upstream node `destination`."""
    context = RuleContext(
        peer.calling_ae, peer.called_ae, peer.calling_ip, (destination,)
    )
    result = rules.mutate(dataset, context, phase, destination)
    if result.matched:
        LOGGER.debug(
            "Rules %s matched on %s for %s", result.matched, phase, peer.calling_ae
        )
    return result


def duplicate(dataset: Dataset) -> Dataset:
    """Return a deep copy that keeps the raw bytes and the original encoding."""
    return copy.deepcopy(dataset)


def tag_text(tag: BaseTag) -> str:
    return f"({tag.group:04X},{tag.element:04X})"
