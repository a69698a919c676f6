"""Read YAML files while keeping the line and column of every value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from capacitor.config.schema import dotted_path
from capacitor.errors import ConfigError, Finding

# Hints for the PyYAML 6 problems that a wrongly indented line usually causes,
# keyed by the start of the problem text.
_INDENTATION_HINT = "check the indentation of this line and the one before it"
_SYNTAX_HINTS = {
    "expected <block end>": _INDENTATION_HINT,
    "mapping values are not allowed here": (
        f"{_INDENTATION_HINT}, and quote a value that contains ': '"
    ),
    "found character '\\t' that cannot start any token": (
        "indent with spaces: YAML does not allow tabs in indentation"
    ),
}


@dataclass
class YamlDocument:
    """A parsed YAML file: its data and the position of each value by path."""

    path: Path
    data: Any
    positions: dict[tuple[object, ...], tuple[int, int]]

    def position(self, path: tuple[object, ...]) -> tuple[int, int]:
        """Return (line, column), 1-based, of the value at `path` or its nearest parent."""
        while path:
            if path in self.positions:
                return self.positions[path]
            path = path[:-1]
        return self.positions.get((), (1, 1))

    def finding(self, path: tuple[object, ...], message: str) -> Finding:
        line, column = self.position(path)
        return Finding(str(self.path), line, column, message)


@dataclass(frozen=True)
class DuplicateKey:
    """A mapping key that occurs again in the same mapping."""

    key: object
    count: int
    line: int
    column: int
    first_line: int


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that records every key repeated within one mapping.

    PyYAML keeps the last value of a repeated key without a warning, so a
    setting written twice would silently take its second value.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[DuplicateKey] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self._record_duplicates(node)
        return super().construct_mapping(node, deep=deep)

    def _record_duplicates(self, node: yaml.MappingNode) -> None:
        # This runs before SafeConstructor.flatten_mapping, so the keys that
        # a merge key (<<) brings in are not counted, because a key written
        # in the mapping itself may replace them.
        first_lines: dict[object, int] = {}
        counts: dict[object, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key not in first_lines:
                first_lines[key] = line
                counts[key] = 1
                continue
            counts[key] += 1
            self.duplicates.append(
                DuplicateKey(key, counts[key], line, key_node.start_mark.column + 1, first_lines[key])
            )


def _duplicate_finding(path: Path, duplicate: DuplicateKey, name: str) -> Finding:
    if duplicate.count == 2:
        message = f"{name} is set twice (first on line {duplicate.first_line}); remove one"
    else:
        message = f"{name} is set {duplicate.count} times (first on line {duplicate.first_line}); keep one"
    return Finding(str(path), duplicate.line, duplicate.column, message)


def _syntax_finding(path: Path, exc: yaml.MarkedYAMLError) -> Finding:
    mark = exc.problem_mark
    line = mark.line + 1 if mark else 1
    column = mark.column + 1 if mark else 1
    problem = exc.problem or str(exc)
    message = f"invalid YAML: {problem}"
    for start, hint in _SYNTAX_HINTS.items():
        if problem.startswith(start):
            message += f"; {hint}"
            break
    return Finding(str(path), line, column, message)


def _collect_positions(
    node: yaml.Node,
    path: tuple[object, ...],
    positions: dict[tuple[object, ...], tuple[int, int]],
    key_paths: dict[tuple[int, int], tuple[object, ...]],
) -> None:
    """Record the position of each value, and the path of the key at each position."""
    positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            key_position = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            # Point key errors (unknown setting) at the key itself.
            positions[path + (key, "<key>")] = key_position
            key_paths[key_position] = path + (key,)
            _collect_positions(value_node, path + (key,), positions, key_paths)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_positions(item, path + (index,), positions, key_paths)


def load_yaml(path: Path) -> YamlDocument:
    """Parse `path` as YAML, raising ConfigError with the position of a syntax error.

    A key repeated within one mapping is an error too, reported at its
    second occurrence.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Finding(str(path), 1, 1, f"file is not valid UTF-8: {exc}")]
        ) from exc

    loader = UniqueKeyLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_syntax_finding(path, exc)]) from exc
    finally:
        loader.dispose()

    positions: dict[tuple[object, ...], tuple[int, int]] = {}
    key_paths: dict[tuple[int, int], tuple[object, ...]] = {}
    if root is not None:
        _collect_positions(root, (), positions, key_paths)
    if loader.duplicates:
        findings = []
        for duplicate in loader.duplicates:
            key_path = key_paths.get((duplicate.line, duplicate.column), (duplicate.key,))
            findings.append(_duplicate_finding(path, duplicate, dotted_path(key_path)))
        raise ConfigError(sorted(findings, key=lambda f: (f.line, f.column)))
    return YamlDocument(path, data, positions)
