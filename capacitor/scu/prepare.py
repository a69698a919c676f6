"""The file actually sent to one destination: the spooled original, or a changed copy.

The spooled original is never modified. When mutate rules change an
instance for a destination, the changed copy is written to the spool's
outgoing folder, sent, and deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from capacitor.config.nodes import Node
from capacitor.spool.index import Delivery
from capacitor.spool.store import Spool
from capacitor.state import RouterState


@dataclass(frozen=True)
class Prepared:
    """The file to send for one delivery; a `temporary` copy is deleted after sending."""

    path: Path
    transfer_syntax: str
    temporary: bool = False


def prepare(state: RouterState, spool: Spool, node: Node, delivery: Delivery) -> Prepared:
    """Return the file to send to `node` for `delivery`.

    TODO: apply the mutate filter for `node` once mutations are applied;
    until then the spooled original is sent as received.
    """
    del state, node
    return Prepared(spool.absolute(delivery.file), delivery.transfer_syntax)
