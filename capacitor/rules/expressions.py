"""Expressions on the right of ``set`` and in templates: text, refs and functions."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass

from pydicom.uid import generate_uid

from capacitor.rules.conditions import Subject
from capacitor.rules.values import Ref

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class Expression:
    """Base class: something that evaluates to text for one dataset."""

    def evaluate(self, subject: Subject) -> str:
        raise NotImplementedError


@dataclass
class Text(Expression):
    """A template: literal text with ``{Keyword}`` placeholders filled in."""

    parts: list[str | Ref]

    def evaluate(self, subject: Subject) -> str:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                values = subject.values(part)
                out.append(values[0].text if values else "")
        return "".join(out)


    def evaluate_path(self, subject: Subject) -> str:
        """Fill in the template as a file path: placeholder values cannot add folders.

        Slashes, backslashes and NUL in a value become ``_``, and a value of
        ``.`` or ``..`` becomes ``_``, so data from the dataset stays inside
        the folder the literal text names.
        """
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            values = subject.values(part)
            text = values[0].text if values else ""
            text = re.sub(r"[/\\\x00]", "_", text)
            out.append("_" if text in (".", "..") else text)
        return "".join(out)


@dataclass
class Number(Expression):
    value: int | float

    def evaluate(self, subject: Subject) -> str:
        return str(self.value)


@dataclass
class RefValue(Expression):
    ref: Ref

    def evaluate(self, subject: Subject) -> str:
        values = subject.values(self.ref)
        return values[0].text if values else ""


@dataclass
class Hash(Expression):
    """The first `length` hex digits (upper case) of SHA-256 over the value."""

    argument: Expression
    length: int

    def evaluate(self, subject: Subject) -> str:
        digest = hashlib.sha256(self.argument.evaluate(subject).encode("utf-8")).hexdigest()
        return digest[: self.length].upper()


@dataclass
class NewUid(Expression):
    def evaluate(self, subject: Subject) -> str:
        return str(generate_uid())


@dataclass
class Today(Expression):
    """The local date as DA (YYYYMMDD)."""

    def evaluate(self, subject: Subject) -> str:
        return dt.date.today().strftime("%Y%m%d")


@dataclass
class Now(Expression):
    """The local time as TM (HHMMSS)."""

    def evaluate(self, subject: Subject) -> str:
        return dt.datetime.now().strftime("%H%M%S")


@dataclass
class Case(Expression):
    argument: Expression
    upper: bool

    def evaluate(self, subject: Subject) -> str:
        text = self.argument.evaluate(subject)
        return text.upper() if self.upper else text.lower()


# name -> (minimum arguments, maximum arguments)
FUNCTIONS = {
    "hash": (1, 2),
    "uid": (0, 0),
    "today": (0, 0),
    "now": (0, 0),
    "upper": (1, 1),
    "lower": (1, 1),
}


def split_template(template: str) -> list[tuple[bool, str]]:
    """Split template text into (is_placeholder, text) pieces.

    ``{{`` and ``}}`` stand for literal braces.
    """
    pieces: list[tuple[bool, str]] = []
    position = 0
    escaped = template.replace("{{", "\x00").replace("}}", "\x01")
    for match in _PLACEHOLDER.finditer(escaped):
        if match.start() > position:
            pieces.append((False, escaped[position : match.start()]))
        pieces.append((True, match.group(1)))
        position = match.end()
    if position < len(escaped):
        pieces.append((False, escaped[position:]))
    return [
        (is_placeholder, text.replace("\x00", "{").replace("\x01", "}"))
        for is_placeholder, text in pieces
    ]
