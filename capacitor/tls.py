"""DICOM TLS (PS3.15 Annex B) for the listeners and for outbound associations.

Contexts are built from the ``tls`` settings with Python's ssl module:
TLS 1.2 or newer, the router's certificate and key, and the CA certificates
that peer certificates must chain to.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from capacitor.config.nodes import Node


class TlsError(ValueError):
    """A TLS setting that cannot be used: a missing or unreadable file."""


def _path(config: Any, key: str) -> str:
    """Return the file a TLS setting names; a relative path is taken from the data folder."""
    value = str(config[key])
    if not value:
        return ""
    path = Path(value)
    return str(path if path.is_absolute() else Path(config.data_dir) / path)


def _load_chain(context: ssl.SSLContext, config: Any) -> None:
    certificate, key = _path(config, "tls.certificate"), _path(config, "tls.privateKey")
    if not certificate:
        return
    try:
        context.load_cert_chain(certificate, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load tls.certificate {certificate!r} with tls.privateKey {key!r}: {exc}") from exc


def _load_authorities(context: ssl.SSLContext, config: Any) -> None:
    authorities = _path(config, "tls.caCertificates")
    try:
        if authorities:
            context.load_verify_locations(cafile=authorities)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load tls.caCertificates {authorities!r}: {exc}") from exc


def server_context(config: Any) -> ssl.SSLContext | None:
    """Return the listeners' TLS context, or None when ``tls.enabled`` is false."""
    if not config["tls.enabled"]:
        return None
    if not config["tls.certificate"]:
        raise TlsError("tls.enabled needs tls.certificate and tls.privateKey")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, config)
    if config["tls.requireClientCertificate"]:
        if not config["tls.caCertificates"]:
            raise TlsError("tls.requireClientCertificate needs tls.caCertificates to verify clients against")
        context.verify_mode = ssl.CERT_REQUIRED
        _load_authorities(context, config)
    return context


def client_tls_args(config: Any, node: Node) -> tuple[ssl.SSLContext, str] | None:
    """Return pynetdicom's ``tls_args`` for an association with `node`, or None without TLS.

    The node's certificate must chain to ``tls.caCertificates`` (or the
    system's CAs when that is empty) and name its HostName. The router's own
    certificate, when configured, is offered to nodes that ask for one.
    """
    if not node.tls:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_authorities(context, config)
    _load_chain(context, config)
    return context, str(node.host)


def check(config: Any, nodes: list[Node]) -> None:
    """Build every context once, so that a bad TLS setting fails at load time."""
    server_context(config)
    for node in nodes:
        client_tls_args(config, node)
