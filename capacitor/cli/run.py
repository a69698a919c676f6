"""``capacitor run``: start the router and serve until SIGTERM or SIGINT.

SIGHUP reloads the configuration at once. After SIGTERM or SIGINT the
router stops as ``Router.stop`` describes, within ``shutdownTimeoutSeconds``.
If a part hangs, a watchdog ends the process EXIT_GRACE_SECONDS later, and a
second signal ends it at once. Neither loses an acknowledged instance,
because each one is in the spool index before it is acknowledged.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from capacitor import logs
from capacitor.cli.common import load_state_or_report
from capacitor.firststart import write_defaults
from capacitor.router import Router
from capacitor.state import load_state

LOGGER = logging.getLogger(__name__)

# Seconds the watchdog allows beyond shutdownTimeoutSeconds for closing the spool.
EXIT_GRACE_SECONDS = 5.0


# Seconds between checks of the flags that the signal handlers set.
_POLL_SECONDS = 0.2


class _Signals:
    """Flags that the signal handlers set; the main thread acts on them.

    The handlers only set flags: taking a lock (logging, Event.set) in a
    handler can deadlock with the main thread it interrupted.
    """

    def __init__(self) -> None:
        self.stop: int | None = None
        self.reload = False

    def on_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.stop is not None:
            os.write(2, b"capacitor: second stop signal: exiting now\n")
            os._exit(1)
        self.stop = signum

    def on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload = True

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.on_stop)
        signal.signal(signal.SIGINT, self.on_stop)
        signal.signal(signal.SIGHUP, self.on_reload)


def _write_defaults(data: str) -> bool:
    try:
        written = write_defaults(Path(data))
    except OSError as exc:
        print(f"capacitor: error: cannot write the default configuration to {data}: {exc}", file=sys.stderr)
        return False
    for path in written:
        print(f"capacitor: wrote default {path}", file=sys.stderr)
    return True


def command(args: argparse.Namespace) -> int:
    if args.write_defaults and not _write_defaults(args.data):
        return 1
    state = load_state_or_report(args)
    if state is None:
        return 1
    logs.configure(logs.LogSettings.from_settings(state.config.settings))
    loader = functools.partial(load_state, args.data, args.cache, args.overrides)
    router = Router(state, loader)
    signals = _Signals()
    signals.install()
    try:
        router.start()
    except OSError as exc:
        LOGGER.error("Cannot start: %s", exc)
        router.stop(timeout=1.0)
        return 1
    _serve(router, signals)
    return _stop(router)


def _serve(router: Router, signals: _Signals) -> None:
    while signals.stop is None:
        time.sleep(_POLL_SECONDS)
        if signals.reload and signals.stop is None:
            signals.reload = False
            LOGGER.info("Received SIGHUP: reloading the configuration")
            if router.watcher is not None:
                router.watcher.reload()
    LOGGER.info("Received %s", signal.Signals(signals.stop).name)


def _stop(router: Router) -> int:
    timeout = float(router.state().config["shutdownTimeoutSeconds"])
    watchdog = threading.Timer(timeout + EXIT_GRACE_SECONDS, _force_exit, args=(timeout,))
    watchdog.daemon = True
    watchdog.start()
    router.stop(timeout)
    watchdog.cancel()
    _exit_past_lingering_threads()
    return 0


def _exit_past_lingering_threads() -> None:
    """End the process now if threads that are not daemon threads would keep it alive.

    pynetdicom 3.0 runs each association's DUL in a non-daemon thread. One
    whose association was abandoned at the deadline, or that waits out the
    ACSE timeout for a connection that never sent an A-ASSOCIATE-RQ, would
    hold the process after ``Router.stop`` returned. Router.stop has closed
    the spool index by then, and every acknowledged instance is in it.
    """
    main = threading.main_thread()
    lingering = [t.name for t in threading.enumerate() if not t.daemon and t is not main]
    if not lingering:
        return
    LOGGER.debug("Exiting past %d running thread(s): %s", len(lingering), ", ".join(lingering))
    logging.shutdown()
    os._exit(0)


def _force_exit(timeout: float) -> None:
    LOGGER.error(
        "Stopping took longer than shutdownTimeoutSeconds (%.0f s) + %.0f s: exiting now; "
        "deliveries still in flight return to the queue at the next start",
        timeout,
        EXIT_GRACE_SECONDS,
    )
    sys.stderr.flush()
    os._exit(1)
