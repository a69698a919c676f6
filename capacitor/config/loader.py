"""Load config.yml and nodes.yml, apply overrides, validate, and build a Config.

Order of precedence, highest first: ``--config.KEY=VALUE``, ``CAPACITOR_*``
environment variables, config.yml, the schema's built-in defaults. Each file
is validated on its own first, so that an error points into the file that
holds it; the merged result is validated again after the overrides.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from capacitor.config import schema as config_schema
from capacitor.config.nodes import ROLES_WITH_ADDRESS, Node, NodeDirectory
from capacitor.config.yamlfile import YamlDocument, load_yaml
from capacitor.errors import ConfigError, Finding

CONFIG_FILE = "config.yml"
NODES_FILE = "nodes.yml"
ENVIRONMENT = "<environment>"
COMMAND_LINE = "<command line>"

# Settings that an environment variable or --config cannot replace.
NOT_OVERRIDABLE = {"nodes"}

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}


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


def parse_size(value: int | str) -> int:
    """Return `value` in bytes; text takes a unit such as ``500MB`` or ``2GiB``."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*", value, re.I)
    if not match:
        raise ValueError(f"invalid size {value!r}: expected bytes or a number with KB, MB or GB")
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
        expected = config_schema.expected_text(error, root)
        findings.append(
            document.finding(
                path, f"{name}: invalid value {error.instance!r}: expected {expected}"
            )
        )
    return sorted(findings, key=lambda f: (f.line, f.column))


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


def _read_nodes_file(path: Path) -> tuple[list[Any], list[Finding]]:
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
    return data, findings


def _override_findings(
    overrides: Mapping[str, str], origin: str, settings: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, str], list[Finding]]:
    """Convert override texts keyed by setting name; unknown keys are findings."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
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
    return values, sources, findings


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


def _node_findings(nodes: list[Node], origins: list[str]) -> list[Finding]:
    findings = []
    seen: dict[str, str] = {}
    for node, origin in zip(nodes, origins):
        missing = [f for f, v in (("HostName", node.host), ("Port", node.port)) if v is None]
        if missing and node.roles & ROLES_WITH_ADDRESS:
            findings.append(
                Finding(
                    origin,
                    0,
                    0,
                    f"node {node.ae_title}: missing {' and '.join(missing)}; "
                    "a node that Capacitor connects to needs an address",
                )
            )
        for title in (node.ae_title, *node.aliases):
            if title in seen:
                findings.append(
                    Finding(origin, 0, 0, f"node {node.ae_title}: AE title {title!r} is already used by node {seen[title]}")
                )
            seen[title] = node.ae_title
    return findings


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
    node_data, node_findings = _read_nodes_file(data_dir / NODES_FILE)
    findings += node_findings
    if findings:
        raise ConfigError(findings)

    effective: dict[str, Any] = dict(config_schema.defaults())
    sources = {key: "default" for key in effective}
    for key, value in _flatten(file_data, set(settings)).items():
        effective[key] = value
        line, _ = document.position(tuple(key.split("."))) if document else (0, 0)
        sources[key] = f"{data_dir / CONFIG_FILE}:{line}"

    for origin, overrides in (
        (ENVIRONMENT, environment_overrides(environ)),
        (COMMAND_LINE, cli_overrides or {}),
    ):
        values, override_sources, override_findings = _override_findings(overrides, origin, settings)
        findings += override_findings
        effective.update(values)
        sources.update(override_sources)
    if findings:
        raise ConfigError(findings)

    findings += _merged_findings(effective, sources)
    if findings:
        raise ConfigError(findings)

    file_nodes = [Node.from_mapping(raw) for raw in effective.get("nodes", [])]
    extra_nodes = [Node.from_mapping(raw) for raw in node_data]
    origins = [str(data_dir / CONFIG_FILE)] * len(file_nodes) + [str(data_dir / NODES_FILE)] * len(extra_nodes)
    all_nodes = file_nodes + extra_nodes
    findings += _node_findings(all_nodes, origins)
    findings += _value_findings(effective, sources, all_nodes, origins)
    if findings:
        raise ConfigError(findings)

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
    _check_tls(config)
    return config


def _check_tls(config: Config) -> None:
    """Build the TLS contexts once, so that a bad certificate setting fails at load time."""
    from capacitor import tls

    try:
        tls.check(config, config.nodes.nodes)
    except tls.TlsError as exc:
        label = config.sources.get("tls.certificate", "default")
        raise ConfigError([Finding(_origin_of(label), 0, 0, str(exc))]) from exc


def _value_findings(
    effective: dict[str, Any], sources: dict[str, str], nodes: list[Node], origins: list[str]
) -> list[Finding]:
    """Check values whose form the schema cannot express: sizes, schedules, syntaxes."""
    from pydicom.uid import UID

    from capacitor.scu.schedule import ScheduleError, parse_schedule

    findings = []

    def check(label: str, key: str, test: Any) -> None:
        try:
            test()
        except ValueError as exc:
            findings.append(Finding(_origin_of(label), 0, 0, f"{key}: {exc}"))

    check(sources["minFreeSpace"], "minFreeSpace", lambda: parse_size(effective["minFreeSpace"]))
    for key in ("processDelay", "expiryThreshold", "duplicateThreshold"):
        check(sources[key], key, lambda key=key: parse_duration(effective[key]))
    check(sources["processSchedule"], "processSchedule", lambda: parse_schedule(effective["processSchedule"]))

    def known_syntax(uid: str) -> None:
        if uid and not UID(uid).is_transfer_syntax:
            raise ValueError(f"{uid} is not a transfer syntax UID pydicom knows, such as 1.2.840.10008.1.2.1")

    check(sources["defaultTransferSyntax"], "defaultTransferSyntax", lambda: known_syntax(effective["defaultTransferSyntax"]))
    for key in [k for k in effective if k.startswith("security.") and k.endswith(".allowedNetworks")]:
        check(sources[key], key, lambda key=key: [ipaddress.ip_network(n, strict=False) for n in effective[key]])
    for node, origin in zip(nodes, origins):
        try:
            parse_schedule(node.process_schedule)
            known_syntax(node.transfer_syntax or "")
        except (ScheduleError, ValueError) as exc:
            findings.append(Finding(origin, 0, 0, f"node {node.ae_title}: {exc}"))
    return findings


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
        key = config_schema.dotted_path(list(error.absolute_path))
        setting = ".".join(str(p) for p in error.absolute_path if not isinstance(p, int))
        label = sources.get(setting, "default")
        expected = config_schema.expected_text(error, validator.schema)
        message = f"{label}: invalid value {error.instance!r} for {key}: expected {expected}"
        findings.append(Finding(_origin_of(label), 0, 0, message))
    return findings
