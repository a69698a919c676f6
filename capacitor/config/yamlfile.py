"""Read YAML files while keeping the line and column of every value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from capacitor.errors import ConfigError, Finding


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


def _collect_positions(
    node: yaml.Node,
    path: tuple[object, ...],
    positions: dict[tuple[object, ...], tuple[int, int]],
) -> None:
    positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            # Point key errors (unknown setting) at the key itself.
            positions[path + (key, "<key>")] = (
                key_node.start_mark.line + 1,
                key_node.start_mark.column + 1,
            )
            _collect_positions(value_node, path + (key,), positions)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_positions(item, path + (index,), positions)


def load_yaml(path: Path) -> YamlDocument:
    """Parse `path` as YAML, raising ConfigError with the position of a syntax error."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Finding(str(path), 1, 1, f"file is not valid UTF-8: {exc}")]
        ) from exc

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else 1
        column = mark.column + 1 if mark else 1
        problem = exc.problem or str(exc)
        raise ConfigError(
            [Finding(str(path), line, column, f"invalid YAML: {problem}")]
        ) from exc

    positions: dict[tuple[object, ...], tuple[int, int]] = {}
    if root is not None:
        _collect_positions(root, (), positions)
    return YamlDocument(path, data, positions)
