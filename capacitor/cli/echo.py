"""``capacitor echo [HOST PORT]``: check that a DICOM node responds to C-ECHO.

Without HOST and PORT it checks the router of the data folder itself, as a
container health check does: it calls ``myAeTitle`` at ``scpPort`` on
``bindAddress`` (127.0.0.1 when that is a wildcard address).
"""

from __future__ import annotations

import argparse
from typing import Any

from pynetdicom import AE, evt

from capacitor.cli.main import UsageError
from capacitor.config.loader import Config, load_config
from capacitor.errors import ConfigError
from capacitor.netutil import failure_reason, install_failure_notes, set_nodelay

VERIFICATION = "1.2.840.10008.1.1"
_WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


def _load(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(args.data, args.cache, args.overrides)
    except ConfigError:
        return None


def _target(args: argparse.Namespace, config: Config | None) -> tuple[str, int, str]:
    """Return host, port and called AE title from the arguments, or from `config` without them."""
    if args.host is not None and args.port is not None:
        return str(args.host), int(args.port), str(args.aec or "ANY-SCP")
    if args.host is not None:
        raise UsageError("give both HOST and PORT, or neither to echo this router's own Store SCP")
    if config is None:
        raise UsageError("without HOST and PORT the configuration must load; run capacitor lint config")
    if not config["scpPort"]:
        raise UsageError("scpPort is 0, so this router's Store SCP is disabled; give HOST and PORT")
    bind = str(config["bindAddress"])
    host = "127.0.0.1" if bind in _WILDCARD_ADDRESSES else bind
    return host, int(config["scpPort"]), str(args.aec or config["myAeTitle"])


def command(args: argparse.Namespace) -> int:
    config = _load(args)
    host, port, called = _target(args, config)
    calling = str(args.aet or (config["myAeTitle"] if config is not None else "CAPACITOR"))
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    ae.connection_timeout = args.timeout
    ae.acse_timeout = args.timeout
    ae.dimse_timeout = args.timeout
    target = f"{called} at {host}:{port}"
    install_failure_notes()
    assoc = ae.associate(host, port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
    if not assoc.is_established:
        print(f"C-ECHO to {target}: {failure_reason(assoc)}; {_next_step(assoc)}")
        return 1
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = status.get("Status") if status else None
    if code is None:
        print(f"C-ECHO to {target}: no response")
        return 1
    verdict = "success" if code == 0 else "failed"
    print(f"C-ECHO to {target}: {verdict} (status 0x{int(code):04X})")
    return 0 if code == 0 else 1


def _next_step(assoc: Any) -> str:
    """Return what to check after an association failure."""
    if assoc.is_rejected:
        return "check the called and calling AE titles (--aec, --aet) against the node's configuration"
    return "check the host, the port and that the node is running"
