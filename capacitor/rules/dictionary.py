"""DICOM data dictionary lookups for rule references: keywords, tags and VRs."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import cache

from pydicom.datadict import dictionary_VR, keyword_dict, private_dictionary_VR

# Association context names that a reference may use instead of an attribute.
CONTEXT_NAMES = ("calling_ae", "called_ae", "calling_ip", "destination")

NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "IS", "DS"})
DATE_VRS = frozenset({"DA", "TM", "DT"})
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UI", "UR", "UT", "AT"}
)

_TAG = re.compile(
    r'\(\s*(?P<group>[0-9A-Za-z]+)\s*,\s*(?:"(?P<creator>(?:[^"\\]|\\.)*)"\s*,\s*)?'
    r"(?P<element>[0-9A-Za-z]+)\s*\)"
)
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")


class TagError(ValueError):
    """A tag written in a rule is malformed or cannot exist."""


@dataclass(frozen=True)
class Tag:
    """A resolved element reference: a standard tag or a private one by creator."""

    group: int
    element: int
    creator: str | None = None

    @property
    def is_private(self) -> bool:
        return self.group % 2 == 1

    @property
    def value(self) -> int:
        return (self.group << 16) | self.element

    def __str__(self) -> str:
        if self.creator is not None:
            return f'({self.group:04X},"{self.creator}",{self.element:02X})'
        return f"({self.group:04X},{self.element:04X})"


def parse_tag(text: str) -> Tag:
    """Parse ``(gggg,eeee)`` or ``(gggg,"CREATOR",ee)`` into a Tag.

    Raises
    ------
    TagError
        If the digits are not hex, the group cannot hold data elements, or a
        private element is outside the creator's block.
    """
    match = _TAG.fullmatch(text.strip())
    if not match:
        raise TagError(f"malformed tag {text}: write (gggg,eeee) with 4 hex digits each")
    group_text, creator, element_text = match.group("group", "creator", "element")
    if not _HEX4.fullmatch(group_text):
        raise TagError(f"malformed tag {text}: group {group_text!r} is not 4 hex digits")
    group = int(group_text, 16)
    if creator is not None:
        if not group % 2:
            raise TagError(
                f"impossible tag {text}: a private creator applies to odd groups only, "
                f"and group {group_text} is even"
            )
        if not _HEX2.fullmatch(element_text) and not (
            _HEX4.fullmatch(element_text) and element_text[:2] in ("00", "10")
        ):
            raise TagError(
                f"malformed tag {text}: a private element by creator is 2 hex digits "
                "(00 to FF), its offset in the creator's block"
            )
        element = int(element_text, 16) & 0xFF
        if not creator.strip():
            raise TagError(f"malformed tag {text}: the private creator is empty")
        return Tag(group, element, creator)

    if not _HEX4.fullmatch(element_text):
        raise TagError(f"malformed tag {text}: element {element_text!r} is not 4 hex digits")
    element = int(element_text, 16)
    if group in (0x0000, 0x0001, 0x0003, 0x0005, 0x0007, 0xFFFF):
        raise TagError(f"impossible tag {text}: group {group_text} holds no data elements")
    if group == 0x0002:
        raise TagError(
            f"impossible tag {text}: group 0002 is File Meta Information, "
            "which is not part of a received dataset"
        )
    if group % 2 and 0x0001 <= element <= 0x000F:
        raise TagError(f"impossible tag {text}: private elements (gggg,0001-000F) are not allowed")
    return Tag(group, element)


@cache
def _keywords() -> tuple[str, ...]:
    return tuple(keyword_dict)


def tag_for_keyword(keyword: str) -> Tag | None:
    tag = keyword_dict.get(keyword)
    if tag is None:
        return None
    return Tag(tag >> 16, tag & 0xFFFF)


def suggest_keyword(word: str) -> str | None:
    """Return the dictionary keyword closest to `word`, if one is close."""
    lowered = {k.lower(): k for k in _keywords()}
    if word.lower() in lowered:
        return lowered[word.lower()]
    matches = difflib.get_close_matches(word, _keywords(), n=1, cutoff=0.8)
    return matches[0] if matches else None


def vr_of(tag: Tag) -> str | None:
    """Return the dictionary VR of `tag`; None when the dictionary does not know it.

    A VR given as alternatives ("US or SS") returns its first alternative,
    which belongs to the same category (numeric or binary) as the others.
    """
    try:
        if tag.creator is not None:
            vr = private_dictionary_VR(
                (tag.group << 16) | 0x1000 | tag.element, tag.creator
            )
        else:
            vr = dictionary_VR(tag.value)
    except KeyError:
        return None
    return vr.split(" or ")[0]


def keyword_for_tag(value: int) -> str | None:
    """Return the dictionary keyword of a standard tag number, or None."""
    from pydicom.datadict import keyword_for_tag as pydicom_keyword

    keyword = pydicom_keyword(value)
    return keyword or None
