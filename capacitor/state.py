"""The router's configuration and compiled rules, loaded and replaced as one value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from capacitor.config.loader import Config, load_config
from capacitor.config.nodes import STORAGE
from capacitor.rules.engine import RuleSet, load_rules


@dataclass(frozen=True)
class RouterState:
    """Everything that a reload replaces at once."""

    config: Config
    rules: RuleSet


def load_state(
    data_dir: Path | str,
    cache_dir: Path | str | None = None,
    cli_overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> RouterState:
    """Load configuration and rules completely; raise ConfigError or RuleError.

    Rules may forward only to Storage nodes, so only their names are known
    to the rule checks.
    """
    config = load_config(data_dir, cache_dir, cli_overrides, environ)
    node_names = [node.ae_title for node in config.nodes.with_role(STORAGE)]
    paths = [config.rules_dir] if config.rules_dir.exists() else []
    rules = load_rules(paths, node_names)
    return RouterState(config, rules)
