"""Mosquitto never runs with a file others can write: the hub may run as root, and then its broker
does too (`user` is whoever runs the hub), so a config, plugin, CA file or CRL that another user can
replace would be root, or the fleet's gate, for them. Checked on real files under umask 000."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tandem.cloud_hub.broker import free_port, wait_for_port
from tandem.cloud_hub.mqtt_security import BrokerFilesError, MosquittoTlsConfig, write_mosquitto_config
from tandem.cloud_hub.pki import Pki
from telemetry_fixtures import MOSQUITTO


def _writable_by_others(root: Path) -> list[str]:
    return [
        f"{p} {stat.S_IMODE(p.lstat().st_mode):o}"
        for p in [root, *root.rglob("*")]
        if not p.is_symlink() and p.lstat().st_mode & 0o022
    ]


def test_pki_and_broker_files_are_not_writable_by_others_whatever_the_umask(tmp_path: Path):
    old = os.umask(0)
    try:
        pki = Pki.init(tmp_path / "deep" / "pki")
        pki.issue_device("dev-a")
        conf = write_mosquitto_config(pki, MosquittoTlsConfig(tmp_path / "deep" / "mq", port=free_port()))
    finally:
        os.umask(old)
    assert _writable_by_others(tmp_path / "deep") == []
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600 and stat.S_IMODE(conf.parent.stat().st_mode) == 0o700
    if MOSQUITTO is not None:  # and the broker really starts from those files
        port = int(conf.read_text().split("listener ", 1)[1].split()[0])
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert wait_for_port("127.0.0.1", port, 10, alive=lambda: proc.poll() is None)
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.mark.parametrize("target", ["crl", "ca", "pki folder", "parent folder"])
def test_the_broker_config_is_refused_when_another_user_could_change_what_it_reads(tmp_path: Path, target):
    pki = Pki.init(tmp_path / "top" / "pki")
    path = {
        "crl": pki.crl_path,
        "ca": pki.hub_server_files().ca,
        "pki folder": pki.root / "hub",
        "parent folder": tmp_path / "top",
    }[target]
    os.chmod(path, stat.S_IMODE(path.stat().st_mode) | 0o002)
    with pytest.raises(BrokerFilesError, match=str(path)):
        write_mosquitto_config(pki, MosquittoTlsConfig(tmp_path / "mq", port=free_port()))
