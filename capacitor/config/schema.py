"""The settings schema: defaults, override names, value conversion, messages."""

from __future__ import annotations

import difflib
import json
import re
from functools import cache
from typing import Any

import jsonschema

from capacitor.resources import resource_path

ENV_PREFIX = "CAPACITOR_"

# Environment variables that configure the command line rather than a setting.
NON_SETTING_ENV = {"CAPACITOR_DATA"}

_TRUE_WORDS = {"true", "1", "yes", "on"}
_FALSE_WORDS = {"false", "0", "no", "off"}


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Return the parsed JSON Schema `name` from the shipped schemas folder."""
    with resource_path("schemas", name).open(encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema


def config_schema() -> dict[str, Any]:
    return load_schema("config.schema.json")


@cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` and merge the referring keywords over the target."""
    if "$ref" not in schema:
        return schema
    target = root
    for part in schema["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    merged = dict(resolve(target, root))
    merged.update({k: v for k, v in schema.items() if k != "$ref"})
    return merged


def setting_schemas() -> dict[str, dict[str, Any]]:
    """Return each setting, dotted for nested ones (``api.port``), and its schema."""
    root = config_schema()
    found: dict[str, dict[str, Any]] = {}

    def walk(properties: dict[str, Any], prefix: str) -> None:
        for key, sub in properties.items():
            sub = resolve(sub, root)
            if sub.get("type") == "object" and "properties" in sub:
                walk(sub["properties"], f"{prefix}{key}.")
            else:
                found[f"{prefix}{key}"] = sub

    walk(root["properties"], "")
    return found


def defaults() -> dict[str, Any]:
    """Return the built-in default of every setting, keyed by dotted name."""
    return {
        key: sub["default"] for key, sub in setting_schemas().items() if "default" in sub
    }


def env_name(setting: str) -> str:
    """Return the environment variable that overrides `setting`.

    An underscore goes before each capital letter and each nesting level, and
    the result is upper-cased: ``myAeTitle`` -> ``CAPACITOR_MY_AE_TITLE``,
    ``api.port`` -> ``CAPACITOR_API_PORT``.
    """
    parts = [re.sub(r"(?<!^)([A-Z])", r"_\1", part) for part in setting.split(".")]
    return ENV_PREFIX + "_".join(parts).upper()


def closest(word: str, candidates: list[str]) -> str | None:
    """Return the candidate most like `word`, ignoring case and underscores, if any is close."""

    def fold(text: str) -> str:
        return text.replace("_", "").replace(".", "").lower()

    folded = {fold(c): c for c in candidates}
    match = difflib.get_close_matches(fold(word), list(folded), n=1, cutoff=0.7)
    return folded[match[0]] if match else None


def _types_of(schema: dict[str, Any]) -> list[str]:
    root = config_schema()
    schema = resolve(schema, root)
    if "type" in schema:
        kind = schema["type"]
        return kind if isinstance(kind, list) else [kind]
    if "anyOf" in schema:
        kinds: list[str] = []
        for option in schema["anyOf"]:
            kinds.extend(_types_of(option))
        return kinds
    if "enum" in schema:
        return ["string"]
    return ["string"]


def convert_text(text: str, schema: dict[str, Any]) -> Any:
    """Convert an override given as text to the type `schema` declares.

    Raises
    ------
    ValueError
        With a message naming what was expected.
    """
    kinds = _types_of(schema)
    stripped = text.strip()
    if "integer" in kinds and re.fullmatch(r"[+-]?\d+", stripped):
        return int(stripped)
    if "number" in kinds and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", stripped):
        number = float(stripped)
        return int(number) if number.is_integer() and "." not in stripped else number
    if "boolean" in kinds:
        if stripped.lower() in _TRUE_WORDS:
            return True
        if stripped.lower() in _FALSE_WORDS:
            return False
        raise ValueError("expected a boolean (true/false, 1/0, yes/no)")
    if "array" in kinds:
        return [item.strip() for item in text.split(",") if item.strip()]
    if "string" in kinds:
        return text
    if "integer" in kinds:
        raise ValueError("expected an integer")
    if "number" in kinds:
        raise ValueError("expected a number")
    raise ValueError(f"cannot convert text to {' or '.join(kinds)}")


def _type_word(schema: dict[str, Any]) -> str:
    words = {
        "integer": "an integer",
        "number": "a number",
        "boolean": "a boolean (true or false)",
        "string": "text",
        "array": "a list",
        "object": "a mapping",
    }
    return " or ".join(words.get(k, k) for k in _types_of(schema))


def expected_text(error: jsonschema.ValidationError, root: dict[str, Any] | None = None) -> str:
    """Return what the failing keyword of `error` expected, in plain words."""
    root = root if root is not None else config_schema()
    schema = resolve(error.schema, root) if isinstance(error.schema, dict) else {}
    validator_name = error.validator
    description = schema.get("description")

    if validator_name in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        kind = _type_word(schema)
        if low is not None and high is not None:
            return f"{kind} from {low} to {high}"
        if "exclusiveMinimum" in schema:
            return f"{kind} greater than {low}"
        if low is not None:
            return f"{kind} of at least {low}"
        return f"{kind} of at most {high}"
    if validator_name == "enum":
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if validator_name == "type":
        return _type_word(schema)
    if validator_name in ("maxLength", "minLength"):
        if description:
            return description
        limit = schema.get("maxLength") if validator_name == "maxLength" else None
        if limit is not None:
            return f"at most {limit} characters"
        return f"at least {schema.get('minLength')} character(s)"
    if validator_name in ("pattern", "anyOf", "oneOf"):
        if description:
            return description
        if "pattern" in schema:
            return f"text matching {schema['pattern']}"
        return "a value of another form"
    return error.message


def dotted_path(path: list[object] | tuple[object, ...]) -> str:
    """Return a readable path such as ``nodes[2].Port``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text
