"""Load config.yml and nodes.yml, apply overrides, validate, and build a Config.

Order of precedence, highest first: ``--config.KEY=VALUE``, ``CAPACITOR_*``
environment variables, config.yml, the schema's built-in defaults. Each file
is validated on its own first, so that an error points into the file that
holds it; the merged result is validated again after the overrides.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from capacitor.config import checks
from capacitor.config import schema as config_schema
from capacitor.config.checks import COMMAND_LINE, ENVIRONMENT, PlacedNode, ValueOrigins
from capacitor.config.nodes import Node, NodeDirectory
from capacitor.config.units import SIZE_EXPECTED, parse_duration, parse_size
from capacitor.config.yamlfile import YamlDocument, load_yaml
from capacitor.errors import ConfigError, Finding

__all__ = ["COMMAND_LINE", "ENVIRONMENT", "Config", "load_config", "parse_duration", "parse_size"]

CONFIG_FILE = "config.yml"
NODES_FILE = "nodes.yml"

# Settings that an environment variable or --config cannot replace.
NOT_OVERRIDABLE = {"nodes"}

# The schema's maxLength of aeTitlePrefix is checked by checks.prefix_findings
# instead, whose message names the limit and the node that the prefix is too
# long for.
_CHECKED_LATER = {(("aeTitlePrefix",), "maxLength")}


@dataclass
class Config:
    """The effective configuration of one data folder."""

    data_dir: Path
    cache_dir: Path
    rules_dir: Path
    settings: dict[str, Any]
    sources: dict[str, str]
    nodes: NodeDirectory
    warnings: list[Finding] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]

    @property
    def filters(self) -> list[str]:
        return [f.strip() for f in self.settings["filters"].split(",") if f.strip()]


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        target = nested
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return nested


def _flatten(data: Mapping[str, Any], known: set[str], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if dotted not in known and isinstance(value, Mapping):
            flat.update(_flatten(value, known, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _schema_findings(
    document: YamlDocument,
    instance: Any,
    validator: jsonschema.Draft202012Validator,
    candidates: list[str],
    path_prefix: tuple[object, ...] = (),
) -> list[Finding]:
    """Validate `instance` and turn each error into a finding at its position."""
    root = validator.schema
    findings = []
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path)))
    for error in errors:
        path = path_prefix + tuple(error.absolute_path)
        name = config_schema.dotted_path(path) or "file"
        if (path, error.validator) in _CHECKED_LATER:
            continue
        if error.validator == "additionalProperties":
            allowed = list(error.schema.get("properties", {}))
            extra = [k for k in error.instance if k not in allowed]
            for key in extra:
                hint = config_schema.closest(key, allowed or candidates)
                message = f"unknown setting {config_schema.dotted_path(path + (key,))!r}"
                if hint:
                    message += f"; did you mean {hint!r}?"
                findings.append(document.finding(path + (key, "<key>"), message))
            continue
        if error.validator == "required":
            findings.append(document.finding(path, f"{name}: {error.message}"))
            continue
        expected = _expected_text(error, root)
        findings.append(
            document.finding(
                path, f"{name}: invalid value {error.instance!r}: expected {expected}"
            )
        )
    return sorted(_unique(findings), key=lambda f: (f.line, f.column))


def _expected_text(error: jsonschema.ValidationError, root: dict[str, Any]) -> str:
    """Return what `error` expected, with the size units that parse_size accepts."""
    if error.schema == root["$defs"]["size"]:
        return SIZE_EXPECTED
    return config_schema.expected_text(error, root)


def _unique(findings: list[Finding]) -> list[Finding]:
    """Drop repeated findings, in order.

    A value can fail two schema keywords with the same message, such as an
    AE title longer than 16 characters, which fails both maxLength and
    pattern and is described by one text.
    """
    return list(dict.fromkeys(findings))


def _read_config_file(path: Path) -> tuple[dict[str, Any], YamlDocument | None, list[Finding]]:
    if not path.exists():
        return {}, None, []
    document = load_yaml(path)
    data = document.data if document.data is not None else {}
    if not isinstance(data, dict):
        return {}, document, [document.finding((), "expected a mapping of settings")]
    validator = config_schema.validator("config.schema.json")
    findings = _schema_findings(document, data, validator, list(config_schema.setting_schemas()))
    return data, document, findings


def _node_list_validator() -> jsonschema.Draft202012Validator:
    root = config_schema.config_schema()
    return jsonschema.Draft202012Validator({"$defs": root["$defs"], "$ref": "#/$defs/nodeList"})


def _read_nodes_file(path: Path) -> tuple[list[PlacedNode], list[Finding]]:
    if not path.exists():
        return [], []
    document = load_yaml(path)
    data = document.data
    prefix: tuple[object, ...] = ()
    if isinstance(data, dict) and set(data) == {"nodes"}:
        data = data["nodes"]
        prefix = ("nodes",)
    if data is None:
        return [], []
    if not isinstance(data, list):
        message = "expected a list of nodes, or a mapping with a 'nodes' list"
        return [], [document.finding((), message)]
    findings = _schema_findings(document, data, _node_list_validator(), [], prefix)
    if findings:
        return [], findings
    return _placed_nodes(document, data, prefix), []


def _placed_nodes(document: YamlDocument, raw_nodes: list[Any], prefix: tuple[object, ...]) -> list[PlacedNode]:
    """Build the nodes of a schema-valid node list, each with its place in `document`."""
    return [
        PlacedNode(Node.from_mapping(raw), document, prefix + (index,))
        for index, raw in enumerate(raw_nodes)
    ]


def _override_findings(
    overrides: Mapping[str, str], origin: str, settings: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, str], dict[str, str], list[Finding]]:
    """Convert override texts keyed by setting name. Unknown keys become findings.

    Returns the converted values, their source labels and their texts, each
    keyed by setting, and the findings.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    texts: dict[str, str] = {}
    findings: list[Finding] = []
    for key, (label, text) in _labelled(overrides, origin, settings).items():
        if key not in settings or key in NOT_OVERRIDABLE:
            hint = config_schema.closest(label, _names(origin, settings))
            message = f"{label} names no setting"
            if hint:
                message += f"; did you mean {hint}?"
            findings.append(Finding(origin, 0, 0, message))
            continue
        try:
            values[key] = config_schema.convert_text(text, settings[key])
        except ValueError as exc:
            findings.append(Finding(origin, 0, 0, f"{label}={text!r}: invalid value for {key}: {exc}"))
            continue
        sources[key] = label
        texts[key] = text
    return values, sources, texts, findings


def _names(origin: str, settings: dict[str, dict[str, Any]]) -> list[str]:
    keys = [k for k in settings if k not in NOT_OVERRIDABLE]
    if origin == ENVIRONMENT:
        return [config_schema.env_name(k) for k in keys]
    return [f"--config.{k}" for k in keys]


def _labelled(
    overrides: Mapping[str, str], origin: str, settings: dict[str, dict[str, Any]]
) -> dict[str, tuple[str, str]]:
    """Key each override by the setting it names, keeping its label for messages."""
    if origin != ENVIRONMENT:
        return {key: (f"--config.{key}", text) for key, text in overrides.items()}
    by_env = {config_schema.env_name(k): k for k in settings}
    labelled: dict[str, tuple[str, str]] = {}
    for variable, text in overrides.items():
        key = by_env.get(variable, variable)
        labelled[key] = (variable, text)
    return labelled


def environment_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """Return the ``CAPACITOR_*`` variables that are meant as setting overrides."""
    return {
        name: value
        for name, value in environ.items()
        if name.startswith(config_schema.ENV_PREFIX) and name not in config_schema.NON_SETTING_ENV
    }


def load_config(
    data_dir: Path | str,
    cache_dir: Path | str | None = None,
    cli_overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read the data folder's configuration with all overrides applied.

    Raises
    ------
    ConfigError
        With one finding per problem, each naming the file or override,
        the key, the value and what was expected.
    """
    data_dir = Path(data_dir).absolute()
    environ = os.environ if environ is None else environ
    settings = config_schema.setting_schemas()
    findings: list[Finding] = []

    file_data, document, file_findings = _read_config_file(data_dir / CONFIG_FILE)
    findings += file_findings
    extra_nodes, node_findings = _read_nodes_file(data_dir / NODES_FILE)
    findings += node_findings
    if findings:
        raise ConfigError(findings)

    effective: dict[str, Any] = dict(config_schema.defaults())
    sources = {key: "default" for key in effective}
    for key, value in _flatten(file_data, set(settings)).items():
        effective[key] = value
        line, _ = document.position(tuple(key.split("."))) if document else (0, 0)
        sources[key] = f"{data_dir / CONFIG_FILE}:{line}"

    override_texts: dict[str, str] = {}
    for origin, overrides in (
        (ENVIRONMENT, environment_overrides(environ)),
        (COMMAND_LINE, cli_overrides or {}),
    ):
        values, override_sources, texts, override_findings = _override_findings(overrides, origin, settings)
        findings += override_findings
        effective.update(values)
        sources.update(override_sources)
        override_texts.update(texts)
    if findings:
        raise ConfigError(findings)

    findings += _merged_findings(effective, sources)
    if findings:
        raise ConfigError(findings)

    file_nodes = _placed_nodes(document, file_data.get("nodes", []), ("nodes",)) if document else []
    placed_nodes = file_nodes + extra_nodes
    all_nodes = [placed.node for placed in placed_nodes]
    origins = ValueOrigins(sources, override_texts, document)
    findings += checks.node_findings(placed_nodes)
    findings += checks.value_findings(effective, origins)
    findings += checks.port_findings(effective, origins)
    findings += checks.pdu_size_findings(effective, origins)
    findings += checks.prefix_findings(effective, origins, all_nodes)
    if findings:
        raise ConfigError(sorted(findings, key=lambda f: (f.file, f.line, f.column)))

    directory = NodeDirectory(
        all_nodes,
        effective["myAeTitle"],
        effective["aeTitlePrefix"],
        effective["aeTitleCaseSensitive"],
    )
    if cache_dir:
        cache = Path(cache_dir).absolute()
    elif effective["cachePath"]:
        cache = data_dir / effective["cachePath"]
    else:
        cache = data_dir / "cache"
    rules_dir = Path(effective["rulesPath"])
    if not rules_dir.is_absolute():
        rules_dir = data_dir / rules_dir
    if cache_dir:
        sources["cachePath"] = "--cache"
        effective["cachePath"] = str(cache)
    config = Config(data_dir, cache, rules_dir, effective, sources, directory)
    _check_tls(config, origins)
    return config


def _check_tls(config: Config, origins: ValueOrigins) -> None:
    """Build the TLS contexts once, so that a bad certificate setting fails at load time."""
    from capacitor import tls

    try:
        tls.check(config, config.nodes.nodes)
    except tls.TlsError as exc:
        raise ConfigError([checks.tls_finding(str(exc), origins)]) from exc


def _origin_of(label: str) -> str:
    if label.startswith(config_schema.ENV_PREFIX):
        return ENVIRONMENT
    if label.startswith("--"):
        return COMMAND_LINE
    return label.rsplit(":", 1)[0]


def _merged_findings(effective: dict[str, Any], sources: dict[str, str]) -> list[Finding]:
    """Validate the merged settings; an error names the override that caused it."""
    validator = config_schema.validator("config.schema.json")
    findings = []
    for error in validator.iter_errors(_nest(effective)):
        if (tuple(error.absolute_path), error.validator) in _CHECKED_LATER:
            continue
        key = config_schema.dotted_path(list(error.absolute_path))
        setting = ".".join(str(p) for p in error.absolute_path if not isinstance(p, int))
        label = sources.get(setting, "default")
        expected = _expected_text(error, validator.schema)
        message = f"{label}: invalid value {error.instance!r} for {key}: expected {expected}"
        findings.append(Finding(_origin_of(label), 0, 0, message))
    return _unique(findings)
