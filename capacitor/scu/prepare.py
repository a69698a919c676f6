"""The file actually sent to one destination: the spooled original, or a changed copy.

The spooled original is never modified. When mutate rules change an
instance for a destination, the changed copy is written to the spool's
outgoing folder, sent, and deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from capacitor.config.nodes import Node
from capacitor.rules.rewrite import mutated_copy
from capacitor.rules.values import RuleContext
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

    With the ``mutate`` filter on, the mutate rules for `node` run on a
    fresh read of the spooled file. If they change it, the changed copy is
    written to the spool's outgoing folder and returned as temporary.
    """
    original = spool.absolute(delivery.file)
    if "mutate" not in state.config.filters:
        return Prepared(original, delivery.transfer_syntax)
    context = RuleContext(delivery.calling_ae, delivery.called_ae, delivery.calling_ip)
    # NOTE: the forwarder proposes presentation contexts from the spooled SOP
    # Class UID and transfer syntax, so a rule that sets SOPClassUID makes
    # the send of the changed copy fail for this destination.
    copy = mutated_copy(state.rules, original, context, node.ae_title, spool.outgoing)
    if copy is None:
        return Prepared(original, delivery.transfer_syntax)
    return Prepared(copy, delivery.transfer_syntax, temporary=True)
