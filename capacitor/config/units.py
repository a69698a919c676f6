"""Sizes and durations written as text with a unit, such as ``500MB`` or ``15m``."""

from __future__ import annotations

import re

# Decimal units are powers of 1000 and binary units powers of 1024 (IEC 80000-13).
_DECIMAL_SIZE_UNITS = {"KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}
_BINARY_SIZE_UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
_SIZE_UNITS = {
    unit.upper(): factor
    for unit, factor in {"": 1, "B": 1, **_DECIMAL_SIZE_UNITS, **_BINARY_SIZE_UNITS}.items()
}



def _word_list(words: list[str]) -> str:
    return ", ".join(words[:-1]) + " or " + words[-1]


SIZE_EXPECTED = (
    f"a size in bytes, or a number followed by {_word_list(['B', *_DECIMAL_SIZE_UNITS])} "
    f"(powers of 1000) or {_word_list(list(_BINARY_SIZE_UNITS))} (powers of 1024), "
    "such as 500MB or 2GiB"
)


def parse_size(value: int | str) -> int:
    """Return `value` in bytes; text takes a unit such as ``500MB`` or ``2GiB``."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*", value, re.I)
    if not match:
        raise ValueError(f"invalid size {value!r}: expected {SIZE_EXPECTED}")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "").upper()])


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: int | float | str) -> float:
    """Return `value` in seconds; text takes a unit such as ``90s``, ``15m``, ``24h`` or ``7d``."""
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", value)
    if not match:
        raise ValueError(f"invalid duration {value!r}: expected seconds or a number with s, m, h or d")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[unit]
