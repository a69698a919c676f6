"""Reading DICOM files without touching their pixel data."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

LOGGER = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A received dataset cannot be read; the message says where it broke."""


@dataclass
class Header:
    """A dataset read up to its pixel data, with the warnings pydicom raised."""

    dataset: Dataset
    warnings: list[str]

    def text(self, keyword: str) -> str:
        value = self.dataset.get(keyword, "")
        return "" if value is None else str(value)


def read_header(path: Path) -> Header:
    """Read `path` up to (not including) the pixel data.

    The returned dataset holds the raw bytes of every element read, so it
    no longer needs the file: the caller may move or delete it. Values are
    decoded when first used.

    Raises
    ------
    DatasetError
        If the file is not a readable DICOM dataset.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = dcmread(path, stop_before_pixels=True, force=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise DatasetError(f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - pydicom raises assorted errors on bad data
            raise DatasetError(f"{type(exc).__name__}: {exc}") from exc
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    return Header(dataset, messages)
