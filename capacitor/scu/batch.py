"""Contents of a destination's next batch, and the order its instances go in."""

from __future__ import annotations

import logging
from typing import Any

from capacitor.config.loader import parse_duration
from capacitor.config.nodes import Node
from capacitor.dicomio import DatasetError, read_header
from capacitor.rules import model as m
from capacitor.rules.values import RuleContext
from capacitor.spool.index import ClaimOrder, Delivery
from capacitor.spool.store import Spool
from capacitor.state import RouterState

LOGGER = logging.getLogger(__name__)


def claim_order(state: RouterState, node: Node) -> ClaimOrder:
    """Return the queue order for `node` from its fields and the settings."""
    config = state.config
    delay = parse_duration(config["processDelay"])
    batch_size = node.batch_size if node.batch_size is not None else int(config["batchSize"])
    return ClaimOrder(
        priorities=tuple(node.sop_class_priorities),
        delay=delay,
        delay_limit=delay * float(config["processDelayWindowMultiplier"]),
        whole_series=batch_size == 0,
        same_caller=node.impersonate,
    )


def order_batch(state: RouterState, node: Node, batch: list[Delivery], spool: Spool) -> list[Delivery]:
    """Order the instances of each series in `batch` by the sort rules for `node`.

    Series keep the order in which the queue gave them; within a series the
    sort rules decide (a stable sort, so ties keep arrival order). Without
    the ``sort`` filter or sort rules, the batch is returned as claimed.
    """
    if "sort" not in state.config.filters or not state.rules.of_kind(m.SORT) or len(batch) < 2:
        return batch
    series_order: dict[str, int] = {}
    keys: dict[int, Any] = {}
    for position, delivery in enumerate(batch):
        series_order.setdefault(delivery.series_uid, len(series_order))
        context = RuleContext(delivery.calling_ae, delivery.called_ae, delivery.calling_ip)
        try:
            dataset = read_header(spool.absolute(delivery.file)).dataset
            keys[delivery.id] = state.rules.sort_key(dataset, context, node.ae_title)
        except (DatasetError, OSError) as exc:
            LOGGER.warning("Cannot read %s to sort it: %s; it keeps its place", delivery.sop_instance_uid, exc)
            keys[delivery.id] = None
    by_series: dict[str, list[Delivery]] = {}
    for delivery in batch:
        by_series.setdefault(delivery.series_uid, []).append(delivery)
    ordered: list[Delivery] = []
    for series in sorted(by_series, key=series_order.__getitem__):
        members = by_series[series]
        sortable = [d for d in members if keys[d.id] is not None]
        unreadable = [d for d in members if keys[d.id] is None]
        ordered += sorted(sortable, key=lambda d: keys[d.id]) + unreadable
    return ordered
