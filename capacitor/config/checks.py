"""Checks of the merged settings and nodes that JSON Schema cannot express.

Each error points at the source of the value that failed: FILE:LINE:COL for
a value from a file, and the variable or option with its text for an
override.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from capacitor.config.nodes import ROLES_WITH_ADDRESS, Node, clean_ae
from capacitor.config.schema import ENV_PREFIX
from capacitor.config.units import parse_duration, parse_size
from capacitor.config.yamlfile import YamlDocument
from capacitor.errors import Finding

ENVIRONMENT = "<environment>"
COMMAND_LINE = "<command line>"
BUILT_IN_DEFAULT = "<default>"

# PS3.5 Table 6.2-1: a value of VR AE is at most 16 characters.
AE_TITLE_MAX_LENGTH = 16

# Smallest maxPduSize other than 0 (no limit). DCMTK accepts no smaller value
# for its own maximum, and a P-DATA PDU needs 12 bytes before any data.
MIN_PDU_SIZE = 4096
# Settings of the ports that the router listens on. A value of 0 turns the listener off.
LISTENER_PORT_SETTINGS = ("scpPort", "findScpPort", "storageCommitScpPort", "queryRetrieveScpPort", "api.port")


@dataclass
class ValueOrigins:
    """The source of each effective setting, and the override texts as given.

    `labels` are those of ``Config.sources``: ``default``, ``FILE:LINE``, a
    ``CAPACITOR_*`` variable or ``--config.KEY``.
    """

    labels: dict[str, str]
    override_texts: dict[str, str]
    document: YamlDocument | None

    def finding(self, key: str, message: str, item: tuple[object, ...] = ()) -> Finding:
        """Return `message` as a finding at the source of setting `key`.

        `item` continues the path inside the value, such as a list index.
        """
        label = self.labels.get(key, "default")
        if label.startswith(ENV_PREFIX) or label.startswith("--"):
            origin = ENVIRONMENT if label.startswith(ENV_PREFIX) else COMMAND_LINE
            return Finding(origin, 0, 0, f"{label}={self.override_texts[key]!r}: {message}")
        if label == "default" or self.document is None:
            return Finding(BUILT_IN_DEFAULT, 0, 0, message)
        return self.document.finding((*key.split("."), *item), message)

    def describe(self, key: str) -> str:
        """Return where setting `key` came from, for a message about another setting."""
        label = self.labels.get(key, "default")
        if label == "default":
            return "its default"
        if label.startswith(ENV_PREFIX) or label.startswith("--"):
            return f"set by {label}"
        return f"set in {label}"

    def precedence(self, key: str) -> tuple[int, int]:
        """Return a sort key that is larger for the source that overrides the others."""
        label = self.labels.get(key, "default")
        if label.startswith("--"):
            return (3, 0)
        if label.startswith(ENV_PREFIX):
            return (2, 0)
        if label == "default" or self.document is None:
            return (0, 0)
        line, _ = self.document.position(tuple(key.split(".")))
        return (1, line)


@dataclass(frozen=True)
class PlacedNode:
    """A node and where its mapping is: the file and the path inside it."""

    node: Node
    document: YamlDocument
    path: tuple[object, ...]

    def finding(self, field_path: tuple[object, ...], message: str) -> Finding:
        return self.document.finding(self.path + field_path, f"node {self.node.ae_title}: {message}")

    def place(self, field_path: tuple[object, ...] = ()) -> str:
        """Return ``FILE:LINE`` of the node's field at `field_path`."""
        line, _ = self.document.position(self.path + field_path)
        return f"{self.document.path}:{line}"


def value_findings(effective: dict[str, Any], origins: ValueOrigins) -> list[Finding]:
    """Check values whose form the schema cannot express: sizes, schedules, syntaxes, networks."""
    from capacitor.scu.schedule import parse_schedule

    findings = []

    def check(key: str, parse: Callable[[Any], object]) -> None:
        try:
            parse(effective[key])
        except ValueError as exc:
            findings.append(origins.finding(key, f"{key}: {exc}"))

    check("minFreeSpace", parse_size)
    for key in ("processDelay", "expiryThreshold", "duplicateThreshold"):
        check(key, parse_duration)
    check("processSchedule", parse_schedule)
    check("defaultTransferSyntax", check_transfer_syntax)
    for key in [k for k in effective if k.startswith("security.") and k.endswith(".allowedNetworks")]:
        findings += _network_findings(key, effective[key], origins)
    return findings


def check_transfer_syntax(uid: str) -> None:
    """Raise ValueError unless `uid` is empty or in pydicom's list of transfer syntax UIDs."""
    from pydicom.uid import UID

    if uid and not UID(uid).is_transfer_syntax:
        raise ValueError(f"{uid} is not a transfer syntax UID pydicom knows, such as 1.2.840.10008.1.2.1")


def _network_findings(key: str, networks: list[str], origins: ValueOrigins) -> list[Finding]:
    findings = []
    for index, network in enumerate(networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            message = (
                f"{key}: invalid network {network!r}: expected an IPv4 or IPv6 address, "
                "or a network in CIDR form such as 10.1.0.0/16"
            )
            findings.append(origins.finding(key, message, (index,)))
    return findings


def node_findings(nodes: list[PlacedNode]) -> list[Finding]:
    """Check each node's address, schedule and transfer syntax, and that AE titles are unique."""
    from capacitor.scu.schedule import ScheduleError, parse_schedule

    findings = []
    first_use: dict[str, tuple[PlacedNode, tuple[object, ...]]] = {}
    for placed in nodes:
        node = placed.node
        missing = [f for f, v in (("HostName", node.host), ("Port", node.port)) if v is None]
        if missing and node.roles & ROLES_WITH_ADDRESS:
            message = (
                f"missing {' and '.join(missing)}; a node that Capacitor connects to needs an address"
            )
            findings.append(placed.finding((), message))
        try:
            parse_schedule(node.process_schedule)
        except ScheduleError as exc:
            findings.append(placed.finding(("ProcessSchedule",), str(exc)))
        try:
            check_transfer_syntax(node.transfer_syntax or "")
        except ValueError as exc:
            findings.append(placed.finding(("TransferSyntax",), str(exc)))
        for title, field_path in _titles_with_fields(node):
            if title in first_use:
                first, first_field = first_use[title]
                message = (
                    f"AE title {title!r} is already used by node {first.node.ae_title} "
                    f"({first.place(first_field)}); give each node its own AeTitle and Aliases"
                )
                findings.append(placed.finding(field_path, message))
            else:
                first_use[title] = (placed, field_path)
    return findings


def _titles_with_fields(node: Node) -> list[tuple[str, tuple[object, ...]]]:
    """Return the node's AeTitle and aliases, each with the path of its field."""
    titles: list[tuple[str, tuple[object, ...]]] = [(node.ae_title, ("AeTitle",))]
    titles += [(alias, ("Aliases", index)) for index, alias in enumerate(node.aliases)]
    return titles


def port_findings(effective: dict[str, Any], origins: ValueOrigins) -> list[Finding]:
    """Report listeners set to the same port, at the setting whose source takes precedence."""
    by_port: dict[int, list[str]] = {}
    for key in LISTENER_PORT_SETTINGS:
        if effective[key]:
            by_port.setdefault(effective[key], []).append(key)
    findings = []
    for port, keys in by_port.items():
        keys.sort(key=origins.precedence)
        port_owner = keys[0]
        for key in keys[1:]:
            message = (
                f"{key}: port {port} is already used by {port_owner} ({origins.describe(port_owner)}); "
                "give each listener its own port, or set one to 0 to turn it off"
            )
            findings.append(origins.finding(key, message))
    return findings


def pdu_size_findings(effective: dict[str, Any], origins: ValueOrigins) -> list[Finding]:
    """Report a maxPduSize too small for peers to send data in."""
    size = effective["maxPduSize"]
    if size == 0 or size >= MIN_PDU_SIZE:
        return []
    message = (
        f"maxPduSize: {size} bytes is too small for peers to send data in; "
        f"use 0 (no limit) or at least {MIN_PDU_SIZE}"
    )
    return [origins.finding("maxPduSize", message)]


def prefix_findings(effective: dict[str, Any], origins: ValueOrigins, nodes: list[Node]) -> list[Finding]:
    """Check that aeTitlePrefix plus each node's AeTitle is still a valid AE title length."""
    prefix = effective["aeTitlePrefix"]
    if not prefix:
        return []
    if not nodes:
        if len(clean_ae(prefix + "X")) <= AE_TITLE_MAX_LENGTH:
            return []
        message = (
            f"aeTitlePrefix {prefix!r} is {len(prefix)} characters; the prefix plus a node's AeTitle "
            f"must fit in {AE_TITLE_MAX_LENGTH} characters, so shorten the prefix to at most "
            f"{AE_TITLE_MAX_LENGTH - 1} characters"
        )
        return [origins.finding("aeTitlePrefix", message)]
    longest = max(nodes, key=lambda node: len(node.ae_title))
    combined = clean_ae(prefix + longest.ae_title)
    if len(combined) <= AE_TITLE_MAX_LENGTH:
        return []
    limit = AE_TITLE_MAX_LENGTH - len(longest.ae_title)
    message = (
        f"aeTitlePrefix {prefix!r} with node {longest.ae_title} makes {combined!r}, "
        f"{len(combined)} characters; the prefix plus the longest node AeTitle must fit in "
        f"{AE_TITLE_MAX_LENGTH} characters, so "
    )
    if limit > 0:
        message += f"shorten the prefix to at most {limit} characters"
    else:
        message += f"shorten the AeTitle of node {longest.ae_title} or set aeTitlePrefix to ''"
    return [origins.finding("aeTitlePrefix", message)]


def tls_finding(message: str, origins: ValueOrigins) -> Finding:
    """Return a TLS check's error at the source of the first setting that its message names.

    capacitor.tls names the setting at fault first, as in ``tls.enabled
    needs tls.certificate and tls.privateKey``.
    """
    named = re.search(r"\btls\.[A-Za-z]+", message)
    key = named.group(0) if named and named.group(0) in origins.labels else "tls.certificate"
    return origins.finding(key, message)
