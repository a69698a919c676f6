"""Specific Character Set decisions for text that mutations write.

Only the VRs SH, LO, ST, LT, PN, UC and UT are encoded with the Specific
Character Set (0008,0005). All other text VRs use the default repertoire
(PS3.5 6.1.2.3). A dataset without the attribute, or with a term that is not
defined, is taken to hold ASCII only, because a receiver cannot be trusted
to decode anything else.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable

from pydicom.charset import (
    CUSTOMIZABLE_CHARSET_VR,
    decode_bytes,
    encode_string,
    python_encoding,
)
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

LOGGER = logging.getLogger(__name__)

UTF8_TERM = "ISO_IR 192"
CHARSET_TAG = 0x00080005
CHARSET_VRS = frozenset(str(vr) for vr in CUSTOMIZABLE_CHARSET_VR)

# Terms whose repertoire is ASCII (ISO-IR 6), the default character repertoire.
_ASCII_TERMS = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})


def charset_terms(dataset: Dataset) -> list[str]:
    """Return the Specific Character Set terms of `dataset` as written, blanks kept."""
    element = dataset.get(CHARSET_TAG)
    if element is None or element.value in (None, ""):
        return []
    value = element.value
    if isinstance(value, (list, MultiValue)):
        return [str(term).strip() for term in value]
    return [term.strip() for term in str(value).split("\\")]


def _codecs(terms: Iterable[str]) -> list[str] | None:
    """Return the Python codecs of `terms`; None when any term is not defined in PS3.3."""
    codecs = []
    for term in terms:
        if term in _ASCII_TERMS:
            codecs.append("ascii")
        elif term in python_encoding:
            codecs.append(python_encoding[term])
        else:
            return None
    return codecs


def can_hold(terms: list[str], text: str) -> bool:
    """Return whether text encoded under `terms` decodes back to exactly `text`.

    ASCII text fits every character set. Any other text fits only a set of
    defined terms that can encode each of its characters.
    """
    if text.isascii():
        return True
    codecs = _codecs(terms)
    if not codecs or codecs == ["ascii"]:
        return False
    if len(codecs) == 1:
        try:
            return text.encode(codecs[0]).decode(codecs[0]) == text
        except UnicodeError:
            return False
    # Code extensions (ISO 2022): let pydicom choose the escape sequences.
    pydicom_codecs = ["iso8859" if codec == "ascii" else codec for codec in codecs]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            encoded = encode_string(text, pydicom_codecs)
            return decode_bytes(encoded, pydicom_codecs, set()) == text
        except (UserWarning, UnicodeError, ValueError, LookupError):
            return False


def decode_all(dataset: Dataset) -> None:
    """Decode every element of `dataset` and its items with the character set they were read with.

    This must happen before the Specific Character Set changes: pydicom
    decodes an element when it is first used, with the set in force then.
    """
    for element in dataset:
        if element.VR == "SQ" and element.value:
            for item in element.value:
                decode_all(item)


def switch_to_utf8(dataset: Dataset) -> None:
    """Set Specific Character Set to ISO_IR 192 and keep every text value as it reads now.

    Values are decoded first with the old set; on writing, pydicom encodes
    every text element of the dataset and its items as UTF-8.
    """
    old = charset_terms(dataset)
    decode_all(dataset)
    dataset.SpecificCharacterSet = UTF8_TERM
    _drop_item_charsets(dataset)
    LOGGER.info("Specific Character Set changed from %r to %r", "\\".join(old), UTF8_TERM)


def _drop_item_charsets(dataset: Dataset) -> None:
    """Remove Specific Character Set from sequence items, so they inherit UTF-8."""
    for element in dataset:
        if element.VR != "SQ" or not element.value:
            continue
        for item in element.value:
            if CHARSET_TAG in item:
                del item[CHARSET_TAG]
            _drop_item_charsets(item)
