"""Sending one instance on an open association, converted if the destination needs it."""

from __future__ import annotations

import logging
from pathlib import Path

from capacitor.config.nodes import Node
from capacitor.scu.association import Outbound
from capacitor.scu.outcome import Outcome, classify
from capacitor.scu.prepare import Prepared, prepare
from capacitor.scu.transcode import ConversionError, choose_syntax, convert
from capacitor.spool.index import FAILED, RETRYING, Delivery
from capacitor.spool.store import Spool
from capacitor.state import RouterState

LOGGER = logging.getLogger(__name__)

# C-STORE Priority (PS3.7 9.3.1.1): MEDIUM 0, HIGH 1, LOW 2.
PRIORITIES = {"MEDIUM": 0, "HIGH": 1, "LOW": 2}


def wanted_syntax(state: RouterState, node: Node, received: str) -> str:
    """Return the syntax `node` should get: its TransferSyntax, the default, else as received."""
    return node.transfer_syntax or state.config["defaultTransferSyntax"] or received


class Sender:
    """Prepare, convert and send single instances for a destination worker."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def send(self, state: RouterState, node: Node, outbound: Outbound, delivery: Delivery) -> Outcome:
        if not self.spool.absolute(delivery.file).exists():
            return Outcome(FAILED, None, f"spool file {delivery.file} is missing")
        try:
            prepared = prepare(state, self.spool, node, delivery)
        except Exception as exc:  # noqa: BLE001 - a rule failing on one instance fails only that delivery
            LOGGER.exception("Preparing %s for %s failed", delivery.sop_instance_uid, node.ae_title)
            return Outcome(FAILED, None, f"preparing the instance failed: {exc}")
        temporary: list[Path] = [prepared.path] if prepared.temporary else []
        try:
            return self._send_prepared(state, node, outbound, delivery, prepared, temporary)
        finally:
            for path in temporary:
                path.unlink(missing_ok=True)

    def _send_prepared(
        self,
        state: RouterState,
        node: Node,
        outbound: Outbound,
        delivery: Delivery,
        prepared: Prepared,
        temporary: list[Path],
    ) -> Outcome:
        accepted = outbound.accepted_syntaxes(delivery.sop_class_uid)
        wanted = wanted_syntax(state, node, prepared.transfer_syntax)
        syntax = choose_syntax(prepared.transfer_syntax, wanted, accepted)
        if syntax is None:
            return Outcome(FAILED, None, f"destination did not accept SOP class {delivery.sop_class_uid}")
        path = prepared.path
        if syntax != prepared.transfer_syntax:
            try:
                path, notes = convert(path, prepared.transfer_syntax, syntax, self.spool.outgoing)
            except ConversionError as exc:
                return Outcome(FAILED, None, f"{exc}; destination accepts {', '.join(accepted)}")
            temporary.append(path)
            for note in notes:
                LOGGER.warning("Instance %s for %s: %s", delivery.sop_instance_uid, node.ae_title, note)
        priority = PRIORITIES.get(node.priority or "MEDIUM", 0)
        try:
            response = outbound.send(path, priority)
        except (ValueError, AttributeError) as exc:
            return Outcome(FAILED, None, f"cannot send: {exc}")
        except (OSError, RuntimeError) as exc:
            return Outcome(RETRYING, None, f"association lost: {exc}")
        if response is None:
            reason = "send stalled" if outbound.stalled else "association aborted or timed out before a response"
            return Outcome(RETRYING, None, reason)
        comment = response.get("ErrorComment")
        return classify(int(response.Status), str(comment) if comment else None)
