"""Allow-lists per listener and DICOM TLS, with certificates generated for the test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import rawpeer
from tests.peers import DCMTK_ENV, HOST, storescu, wait_until


def associate(port: int, calling: bytes) -> rawpeer.Reply | None:
    peer = rawpeer.RawPeer(port)
    try:
        peer.send(rawpeer.associate_rq(b"CAPACITOR", calling, [(1, rawpeer.VERIFICATION, [rawpeer.IMPLICIT_LE])]))
        return peer.receive()
    finally:
        peer.close()


class TestAllowLists:
    def test_calling_title_outside_list_is_rejected(self, router):
        capacitor = router({"security": {"store": {"allowedCallingAeTitles": ["MOD_CT"]}}})

        allowed = associate(capacitor.port, b"MOD_CT ")
        refused = associate(capacitor.port, b"INTRUDER")

        assert allowed is not None and allowed.pdu_type == 0x02
        assert refused is not None and refused.pdu_type == 0x03
        assert refused.rejection == (1, 1, 3)
        assert "calling AE title 'INTRUDER' is not in the listener's allowedCallingAeTitles" in capacitor.log_text()

    def test_address_outside_networks_is_rejected(self, router):
        capacitor = router({"security": {"store": {"allowedNetworks": ["10.0.0.0/8"]}}})

        refused = associate(capacitor.port, b"MOD_CT")

        assert refused is not None and refused.pdu_type == 0x03
        assert refused.rejection == (1, 1, 1)
        assert "address 127.0.0.1 is not in the listener's allowedNetworks" in capacitor.log_text()

    def test_address_inside_networks_is_accepted(self, router):
        capacitor = router({"security": {"store": {"allowedNetworks": ["127.0.0.0/8", "::1"]}}})

        allowed = associate(capacitor.port, b"MOD_CT")

        assert allowed is not None and allowed.pdu_type == 0x02

    def test_lists_apply_per_listener(self, router):
        capacitor = router({"security": {"worklist": {"allowedCallingAeTitles": ["RIS_ONLY"]}}})

        allowed = associate(capacitor.port, b"ANYONE")

        assert allowed is not None and allowed.pdu_type == 0x02

    def test_invalid_network_is_a_configuration_error(self, tmp_path):
        from capacitor.config.loader import load_config
        from capacitor.errors import ConfigError

        (tmp_path / "config.yml").write_text("security:\n  store:\n    allowedNetworks: [10.0.0.300/8]\n")

        with pytest.raises(ConfigError, match="security.store.allowedNetworks: .*10.0.0.300"):
            load_config(tmp_path, environ={})


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    """A test CA and certificates for 127.0.0.1 signed by it (router, sink, client)."""
    folder = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=Capacitor Test CA", cwd=folder)
    extensions = folder / "leaf.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    for name in ("router", "sink", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=folder)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", str(extensions), cwd=folder)
    return folder


def tls_sink(sinks, pki: Path):
    sink = sinks("ARCHIVE", start=False)
    sink.start(("+tls", str(pki / "sink.key"), str(pki / "sink.pem"), "+cf", str(pki / "ca.pem"), "-ic"))
    return sink


def tls_settings(pki: Path, require_client: bool = False) -> dict:
    return {
        "enabled": True,
        "certificate": str(pki / "router.pem"),
        "privateKey": str(pki / "router.key"),
        "caCertificates": str(pki / "ca.pem"),
        "requireClientCertificate": require_client,
    }


class TestTls:
    def test_tls_end_to_end(self, router, sinks, make_files, certificates):
        sink = tls_sink(sinks, certificates)
        capacitor = router({"nodes": [sink.node(Tls=True)], "tls": tls_settings(certificates)})
        tls_sender = ("+tls", str(certificates / "client.key"), str(certificates / "client.pem"),
                      "+cf", str(certificates / "ca.pem"))

        result = storescu(capacitor.port, make_files(3), called="ARCHIVE", extra=tls_sender)

        assert result.returncode == 0, result.stderr
        sink.wait_for(3)
        assert "with TLS" in capacitor.log_text()

    def test_plain_connection_to_tls_listener_fails(self, router, make_files, certificates):
        capacitor = router({"tls": tls_settings(certificates)})

        result = storescu(capacitor.port, make_files(1))

        assert result.returncode != 0

    def test_client_certificate_is_required_when_asked(self, router, make_files, certificates):
        capacitor = router({"tls": tls_settings(certificates, require_client=True)})
        anonymous = ("+tla", "+cf", str(certificates / "ca.pem"))
        with_certificate = ("+tls", str(certificates / "client.key"), str(certificates / "client.pem"),
                            "+cf", str(certificates / "ca.pem"))

        refused = storescu(capacitor.port, make_files(1), extra=anonymous)
        accepted = storescu(capacitor.port, make_files(1), extra=with_certificate)

        assert refused.returncode != 0
        assert accepted.returncode == 0, accepted.stderr

    def test_untrusted_destination_certificate_fails_visibly(self, router, sinks, make_files, certificates, tmp_path):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out", "rogue.pem",
                "-days", "2", "-subj", "/CN=rogue", "-addext", "subjectAltName=IP:127.0.0.1", cwd=tmp_path)
        sink = sinks("ARCHIVE", start=False)
        sink.start(("+tls", str(tmp_path / "rogue.key"), str(tmp_path / "rogue.pem"), "-ic"))
        capacitor = router({"nodes": [sink.node(Tls=True)], "tls": {"caCertificates": str(certificates / "ca.pem")}})

        assert storescu(capacitor.port, make_files(1), called="ARCHIVE").returncode == 0

        wait_until(lambda: capacitor.delivery_states().get("ARCHIVE", {}).get("retrying") == 1, 30, "delivery retrying")
        assert sink.files() == []

    def test_missing_certificate_file_is_a_configuration_error(self, tmp_path):
        from capacitor.config.loader import load_config
        from capacitor.errors import ConfigError

        (tmp_path / "config.yml").write_text("tls:\n  enabled: true\n  certificate: missing.pem\n  privateKey: missing.key\n")

        with pytest.raises(ConfigError, match="cannot load tls.certificate"):
            load_config(tmp_path, environ={})


def test_echo_command_over_plain_tcp_still_works(router):
    capacitor = router({})

    result = subprocess.run(["echoscu", "-aec", "CAPACITOR", HOST, str(capacitor.port)], env=DCMTK_ENV, capture_output=True)

    assert result.returncode == 0
