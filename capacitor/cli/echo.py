"""``capacitor echo HOST PORT``: check that a DICOM node answers C-ECHO."""

from __future__ import annotations

import argparse

from pynetdicom import AE, evt

from capacitor.config.loader import load_config
from capacitor.errors import ConfigError
from capacitor.netutil import set_nodelay

VERIFICATION = "1.2.840.10008.1.1"


def _calling_ae(args: argparse.Namespace) -> str:
    if args.aet:
        return str(args.aet)
    try:
        return str(load_config(args.data, args.cache, args.overrides)["myAeTitle"])
    except ConfigError:
        return "CAPACITOR"


def command(args: argparse.Namespace) -> int:
    ae = AE(ae_title=_calling_ae(args))
    ae.add_requested_context(VERIFICATION)
    ae.connection_timeout = args.timeout
    ae.acse_timeout = args.timeout
    ae.dimse_timeout = args.timeout
    target = f"{args.aec} at {args.host}:{args.port}"
    assoc = ae.associate(args.host, args.port, ae_title=args.aec, evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        print(f"C-ECHO to {target}: association {reason}")
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
