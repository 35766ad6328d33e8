"""The PKI commands, the generated broker ACL, the per-device rate limiter and TLS settings (fast, no sockets)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from tandem.cloud_hub.cli import main
from tandem.cloud_hub.mqtt_security import acl_text
from tandem.cloud_hub.pki import HUB_IDENTITY, Pki
from tandem.cloud_hub.ratelimit import RateLimiter
from tandem.protocols import topics
from tandem.protocols.tls import TlsConfigError, TlsFiles


def test_pki_commands_make_a_ca_device_certificates_a_crl_and_a_broker_config(tmp_path, capsys):
    root = tmp_path / "pki"
    assert main(["pki", "init", "--dir", str(root), "--hostname", "hub.example.org", "--hostname", "10.0.0.7"]) == 0
    assert main(["pki", "issue", "cam-017", "--dir", str(root)]) == 0
    assert main(["pki", "issue", "cam+017", "--dir", str(root)]) == 1  # '+' would be a wildcard
    assert "may not contain '+'" in capsys.readouterr().err
    assert main(["pki", "init", "--dir", str(root)]) == 1  # never silently replace a CA
    assert main(["pki", "revoke", "cam-017", "--dir", str(root)]) == 0
    assert main(["pki", "revoke", "cam-017", "--dir", str(root)]) == 1  # nothing live left
    assert main(["pki", "issue", "cam-017", "--dir", str(root)]) == 0  # re-issued after revocation
    assert main(["pki", "mosquitto-conf", "--dir", str(root), "--out", str(tmp_path / "mq"), "--port", "18883"]) == 0
    capsys.readouterr()
    assert main(["pki", "list", "--dir", str(root)]) == 0
    listing = capsys.readouterr().out
    assert listing.count("cam-017") == 2 and HUB_IDENTITY in listing

    pki = Pki(root)
    server = x509.load_pem_x509_certificate(pki.hub_server_files().cert.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "hub.example.org"} <= set(sans.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "10.0.0.7"} <= {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    crl = x509.load_pem_x509_crl(pki.crl_path.read_bytes())
    assert len(list(crl)) == 1 and crl.is_signature_valid(
        x509.load_pem_x509_certificate(pki.ca_cert_path.read_bytes()).public_key()
    )
    for key in (pki.ca_key_path, pki.device_files("cam-017").key, pki.hub_server_files().key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    conf = (tmp_path / "mq" / "mosquitto.conf").read_text()
    for line in (
        "require_certificate true",
        "plugin_opt_hub_identity _hub",
        "allow_anonymous false",
        f"crlfile {pki.crl_path}",
        "listener 18883 127.0.0.1",
    ):
        assert line in conf
    assert "use_identity_as_username" not in conf  # it would let a certificate choose any client id
    plugin = next(line.split(" ", 1)[1] for line in conf.splitlines() if line.startswith("plugin "))
    assert Path(plugin).is_file() and Path(plugin).parent == tmp_path / "mq"


def test_acl_pins_each_device_to_its_own_topics_and_the_hub_to_the_tree():
    lines = acl_text().splitlines()
    writes, reads = topics.device_acl_patterns()
    assert {f"pattern write {p}" for p in writes} <= set(lines)
    assert {f"pattern read {p}" for p in reads} <= set(lines)
    assert all("%u" in p for p in writes + reads)
    assert not any(line.startswith("pattern") and ("+" in line or "#" in line) for line in lines)
    assert lines[lines.index(f"user {HUB_IDENTITY}") + 1] == f"topic readwrite {topics.hub_acl_topics()[0]}"
    assert topics.OTA_CMD not in {p.rsplit("%u/", 1)[1] for p in writes}  # a device never writes commands


def test_rate_limiter_allows_a_burst_then_the_rate_per_device_and_bounds_its_memory():
    now = [0.0]
    limiter = RateLimiter(2.0, 3, max_keys=100, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(5)] == [True, True, True, False, False]
    assert limiter.allow("b")  # another device has its own bucket
    now[0] += 1.0  # 2 tokens back
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    for i in range(1000):
        limiter.allow(f"d{i}")
    assert len(limiter) == 100 and limiter.refused == 3


def test_tls_files_name_what_is_missing(tmp_path):
    with pytest.raises(TlsConfigError, match="both cert and key"):
        TlsFiles(tmp_path / "ca.crt", cert=tmp_path / "c.crt")
    with pytest.raises(TlsConfigError, match="tls.ca"):
        TlsFiles.in_dir(tmp_path).check()
    assert topics.parse_mqtt_url("mqtts://hub") == ("hub", 8883) and topics.mqtt_url_uses_tls("mqtts://hub")


def test_plain_text_is_logged_loudly_once_per_component(caplog):
    import paho.mqtt.client as mqtt

    from tandem.protocols.tls import PLAIN_TEXT_WARNING, configure_mqtt_client

    for _ in range(3):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        assert configure_mqtt_client(client, "mqtt://127.0.0.1:1883", None, "test component x") == ("127.0.0.1", 1883)
    warnings = [r for r in caplog.records if "test component x" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert PLAIN_TEXT_WARNING.upper() in warnings[0].getMessage()
