"""Converting an instance to the transfer syntax a destination accepts.

Decoding and encoding go through pydicom's pixel data codecs, with the
pylibjpeg, openjpeg, libjpeg and RLE plugins. Pixel data is never dropped:
a conversion that cannot decode or encode raises ConversionError, and the
delivery fails visibly instead. Compressed pixel data is never labelled
with an uncompressed transfer syntax, because the only way to an
uncompressed syntax is a full decode.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.uid import UID, ImplicitVRLittleEndian

LOGGER = logging.getLogger(__name__)

# VRs whose value bytes are binary: a reader that assumes another VR from the
# dictionary misreads them, and they misread text written under them.
_BINARY_VRS = frozenset(
    {"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT", "OB", "OW", "OF", "OD", "OL", "OV", "UN"}
)


# Transfer syntaxes pydicom can encode to that lose information (PS3.5 8.2).
LOSSY_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        "1.2.840.10008.1.2.4.51",  # JPEG Extended
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 multi-component
        "1.2.840.10008.1.2.4.203",  # HTJ2K
    }
)


class ConversionError(Exception):
    """An instance cannot be converted to the transfer syntax requested."""


def is_compressed(syntax: str) -> bool:
    return bool(UID(syntax).is_compressed)


def drop_vr_conflicts(dataset: Dataset, path: str = "") -> list[str]:
    """Remove elements that Implicit VR Little Endian would make unreadable.

    Implicit VR carries no VR, so a reader takes it from the data
    dictionary. An element written with another VR than the dictionary's
    is read wrongly when one side is a sequence (a text value read as SQ
    breaks the parse) or binary. Such elements are removed, recursively,
    and their tags returned for the log; text-to-text differences (LO
    where the dictionary gives SH) read back correctly and stay.
    """
    removed = []
    for element in list(dataset):
        if element.VR == "SQ":
            for number, item in enumerate(element.value or []):
                removed += drop_vr_conflicts(item, f"{path}{element.tag}[{number}].")
        if element.tag.is_private or element.tag.group == 0x0002:
            continue
        try:
            expected = set(dictionary_VR(element.tag).split(" or "))
        except KeyError:
            continue
        actual = element.VR
        if actual in expected:
            continue
        sequence_mismatch = ("SQ" in expected) != (actual == "SQ")
        binary_mismatch = bool(expected & _BINARY_VRS) != (actual in _BINARY_VRS)
        if sequence_mismatch or binary_mismatch:
            del dataset[element.tag]
            removed.append(f"{path}{element.tag} ({actual}, dictionary {'/'.join(sorted(expected))})")
    return removed


def convert(source: Path, source_syntax: str, target_syntax: str, folder: Path) -> tuple[Path, list[str]]:
    """Write a copy of `source` in `target_syntax` into `folder`.

    Returns the copy's path and the notes a caller should log (elements
    removed for Implicit VR). Lossless conversions keep the SOP Instance
    UID; pydicom assigns a new one when it encodes lossily, as PS3.5
    section 8.2 requires.

    Raises
    ------
    ConversionError
        If no available codec can decode the source or encode the target.
    """
    target = UID(target_syntax)
    try:
        dataset = dcmread(source)
        if is_compressed(source_syntax) and "PixelData" in dataset:
            dataset.decompress(generate_instance_uid=False)
        notes: list[str] = []
        if target.is_compressed:
            if "PixelData" not in dataset:
                raise ConversionError(f"no pixel data to encode as {target.name}")
            dataset.compress(target, generate_instance_uid=target in LOSSY_SYNTAXES)
        else:
            dataset.file_meta.TransferSyntaxUID = target
            if target == ImplicitVRLittleEndian:
                removed = drop_vr_conflicts(dataset)
                if removed:
                    notes.append(
                        "removed for Implicit VR Little Endian, because their VR contradicts the "
                        f"data dictionary: {', '.join(removed)}"
                    )
        copy = folder / f"tx-{uuid.uuid4().hex}.dcm"
        dataset.save_as(copy, enforce_file_format=True)
    except ConversionError:
        raise
    except Exception as exc:  # noqa: BLE001 - codecs raise many kinds of error
        raise ConversionError(
            f"cannot convert {UID(source_syntax).name} to {target.name}: {type(exc).__name__}: {exc}"
        ) from exc
    return copy, notes


def choose_syntax(received: str, wanted: str, accepted: list[str]) -> str | None:
    """Pick the syntax to send in: the wanted one, else as received, else a fallback.

    The fallback prefers an uncompressed syntax (a decode always loses
    nothing) over encoding into another compressed one. None when the
    destination accepted the SOP class in no syntax at all.
    """
    if wanted in accepted:
        return wanted
    if received in accepted:
        return received
    uncompressed = [s for s in accepted if not is_compressed(s)]
    if uncompressed:
        return uncompressed[0]
    return accepted[0] if accepted else None
