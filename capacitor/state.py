"""The router's configuration and compiled rules, loaded and replaced as one value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from capacitor.config.loader import Config, load_config
from capacitor.rules.engine import RuleSet, load_rules


def node_roles(config: Config) -> dict[str, frozenset[str]]:
    """Return the AE title and roles of every configured node, for the rule checks."""
    return {node.ae_title: node.roles for node in config.nodes}


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

    The rule checks know every node with its roles, so that a rule that
    forwards to a Worklist node, for example, is reported as such.
    """
    config = load_config(data_dir, cache_dir, cli_overrides, environ)
    paths = [config.rules_dir] if config.rules_dir.exists() else []
    rules = load_rules(paths, node_roles(config))
    return RouterState(config, rules)
