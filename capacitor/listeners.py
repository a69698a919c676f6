"""Starting a DICOM listener: the AE settings and TLS every listener shares."""

from __future__ import annotations

from typing import Any

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from capacitor import tls
from capacitor.config.loader import Config

VERIFICATION = "1.2.840.10008.1.1"


def start_server(config: Config, host: str, port: int, handlers: list[Any]) -> ThreadedAssociationServer:
    """Start a non-blocking listener on `host`:`port` with the router's settings.

    The presentation contexts and the association limit are decided per
    association by the listener's Negotiator. The AE's own limit is only a
    backstop, and its single Verification context only satisfies
    pynetdicom's check that a server supports something.
    """
    ae = AE(ae_title=config["myAeTitle"])
    ae.require_called_aet = False
    ae.maximum_associations = max(int(config["maxAssociations"]) + 1, 1000)
    ae.maximum_pdu_size = config["maxPduSize"]
    ae.acse_timeout = config["acseTimeoutSeconds"]
    ae.dimse_timeout = config["dimseTimeoutSeconds"]
    ae.network_timeout = config["networkTimeoutSeconds"]
    ae.add_supported_context(VERIFICATION)
    server = ae.start_server(
        (host, port), block=False, evt_handlers=handlers, ssl_context=tls.server_context(config)
    )
    assert server is not None  # a non-blocking start always returns the server
    return server
