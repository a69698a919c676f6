"""``capacitor run``: start the router and serve until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from capacitor import logs
from capacitor.cli.common import load_state_or_report
from capacitor.router import Router

LOGGER = logging.getLogger(__name__)


def command(args: argparse.Namespace) -> int:
    state = load_state_or_report(args)
    if state is None:
        return 1
    logs.configure(state.config["logLevel"])
    router = Router(state)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        LOGGER.info("Received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        router.start()
    except OSError as exc:
        LOGGER.error("Cannot start: %s", exc)
        router.stop()
        return 1
    while not stop.wait(1.0):
        pass
    router.stop()
    return 0
