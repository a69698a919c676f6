"""Pieces shared by the YAML import of filters and of their actions."""

from __future__ import annotations

import re

from capacitor.rules.dictionary import keyword_for_tag

_TAG = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\s*\)?")
_PLACEHOLDER = re.compile(r"\{\s*\(?([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\)?\s*\}")


class Untranslatable(ValueError):
    """A part of a filter that has no equivalent in the rule language."""

    def __init__(self, path: tuple[object, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


def tag_reference(tag_text: str, creator: str | None, path: tuple[object, ...]) -> str:
    """Return the rule reference text for a YAML tag, keyword or private tag."""
    text = str(tag_text).strip()
    match = _TAG.fullmatch(text)
    if match is None:
        if re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", text) and creator is None:
            return text
        raise Untranslatable(path, f"tag {text!r} is neither gggg,eeee nor a keyword")
    group, element = match.group(1).upper(), match.group(2).upper()
    if creator is not None:
        return f'({group},"{creator}",{element[2:]})'
    keyword = keyword_for_tag(int(group + element, 16))
    return keyword or f"({group},{element})"


def convert_placeholders(template: str) -> str:
    """Turn ``{gggg,eeee}`` placeholders into ``{Keyword}`` (or ``{(gggg,eeee)}``)."""

    def replace(match: re.Match[str]) -> str:
        group, element = match.group(1).upper(), match.group(2).upper()
        return "{" + (keyword_for_tag(int(group + element, 16)) or f"({group},{element})") + "}"

    return _PLACEHOLDER.sub(replace, template)
