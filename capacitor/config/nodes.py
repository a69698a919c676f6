"""Nodes: the peers Capacitor stores to and proxies for, and AE title lookup."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

STORAGE = "Storage"
WORKLIST = "Worklist"
QUERY_RETRIEVE = "QueryRetrieve"
COMMIT_SCP = "StorageCommitSCP"
COMMIT_SCU = "StorageCommitSCU"

# Roles whose nodes receive associations from Capacitor and so need an address.
ROLES_WITH_ADDRESS = {STORAGE, WORKLIST, QUERY_RETRIEVE, COMMIT_SCP, COMMIT_SCU}


def clean_ae(title: str) -> str:
    """Strip the leading and trailing spaces that PS3.5 declares insignificant in AE."""
    return title.strip(" ")


@dataclass(frozen=True)
class Node:
    """One entry of the node list, with its PascalCase fields read."""

    ae_title: str
    aliases: tuple[str, ...] = ()
    host: str | None = None
    port: int | None = None
    roles: frozenset[str] = frozenset({STORAGE})
    transfer_syntax: str | None = None
    batch_size: int | None = None
    process_schedule: str | None = None
    impersonate: bool = False
    priority: str | None = None
    sop_class_priorities: tuple[str, ...] = ()
    cfind_failure_behavior: str = "Fail"
    move_mode: str = "Direct"
    description: str = ""
    tls: bool = False
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Node:
        roles = raw.get("NodeRole", STORAGE)
        if isinstance(roles, str):
            roles = [roles]
        return cls(
            ae_title=clean_ae(raw["AeTitle"]),
            aliases=tuple(clean_ae(a) for a in raw.get("Aliases", [])),
            host=raw.get("HostName"),
            port=raw.get("Port"),
            roles=frozenset(roles),
            transfer_syntax=raw.get("TransferSyntax"),
            batch_size=raw.get("BatchSize"),
            process_schedule=raw.get("ProcessSchedule"),
            impersonate=bool(raw.get("Impersonate", False)),
            priority=raw.get("Priority"),
            sop_class_priorities=tuple(raw.get("SopClassPriorities", [])),
            cfind_failure_behavior=raw.get("CFindFailureBehavior", "Fail"),
            move_mode=raw.get("MoveMode", "Direct"),
            description=raw.get("Description", ""),
            tls=bool(raw.get("Tls", False)),
            fields=dict(raw),
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def has_role(self, role: str) -> bool:
        return role in self.roles


class NodeDirectory:
    """Resolve a called AE title to a node by AeTitle, alias or prefixed AeTitle.

    Parameters
    ----------
    nodes : iterable of Node
        The configured nodes.
    my_ae_title : str
        The router's own AE title (``myAeTitle``).
    prefix : str
        ``aeTitlePrefix``; ``prefix + AeTitle`` also names a node.
    case_sensitive : bool
        ``aeTitleCaseSensitive``; when false, titles compare case-folded.
    """

    def __init__(
        self,
        nodes: Iterable[Node],
        my_ae_title: str,
        prefix: str = "",
        case_sensitive: bool = True,
    ) -> None:
        self.nodes = list(nodes)
        self.my_ae_title = clean_ae(my_ae_title)
        self.prefix = prefix
        self.case_sensitive = case_sensitive
        self._by_title: dict[str, list[Node]] = {}
        for node in self.nodes:
            for title in self.titles_of(node):
                self._by_title.setdefault(self._fold(title), []).append(node)

    def _fold(self, title: str) -> str:
        title = clean_ae(title)
        return title if self.case_sensitive else title.upper()

    def titles_of(self, node: Node) -> list[str]:
        """Return every AE title that addresses `node`."""
        titles = [node.ae_title, *node.aliases]
        if self.prefix:
            titles.append(clean_ae(self.prefix + node.ae_title))
        return titles

    def is_self(self, called_ae: str) -> bool:
        return self._fold(called_ae) == self._fold(self.my_ae_title)

    def find(self, called_ae: str, role: str | None = None) -> list[Node]:
        """Return the nodes that `called_ae` addresses, limited to `role` if given."""
        found = self._by_title.get(self._fold(called_ae), [])
        if role is not None:
            found = [n for n in found if n.has_role(role)]
        return found

    def by_name(self, name: str) -> Node | None:
        """Return the node whose AeTitle (not alias) is `name`."""
        folded = self._fold(name)
        for node in self.nodes:
            if self._fold(node.ae_title) == folded:
                return node
        return None

    def with_role(self, role: str) -> list[Node]:
        return [n for n in self.nodes if n.has_role(role)]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)
