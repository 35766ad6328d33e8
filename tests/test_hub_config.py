"""Hub configuration: defaults, TOML, TANDEM_HUB_* env overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.errors import ConfigError


def test_defaults_are_a_first_run_on_one_machine():
    config = HubConfig.load(env={})
    assert config.data_dir == Path("./tandem-data") and config.mqtt_url is None and config.broker == "auto"
    assert config.release_key_path == Path("./tandem-data/keys/release.ed25519.pem")


def test_file_then_env_then_flags(tmp_path):
    path = tmp_path / "hub.toml"
    path.write_text('[hub]\nhttp_port = 9000\ngrpc_port = 9001\ndata_dir = "/srv/tandem"\n')
    env = {"TANDEM_HUB_HTTP_PORT": "9100", "TANDEM_HUB_MODEL_DIRS": "/m/a:/m/b", "TANDEM_HUB_OFFLINE_AFTER_S": "30"}
    config = HubConfig.load(path, env=env, grpc_port=9201)
    assert (config.http_port, config.grpc_port, config.data_dir) == (9100, 9201, Path("/srv/tandem"))
    assert config.model_dirs == (Path("/m/a"), Path("/m/b")) and config.offline_after_s == 30.0


@pytest.mark.parametrize(
    "env,key",
    [
        ({"TANDEM_HUB_HTTP_PORT": "eighty"}, "TANDEM_HUB_HTTP_PORT"),
        ({"TANDEM_HUB_HTTP_PORT": "70000"}, "TANDEM_HUB_HTTP_PORT"),
        ({"TANDEM_HUB_BROKER": "rabbit"}, "TANDEM_HUB_BROKER"),
        ({"TANDEM_HUB_MQTT_URL": "http://x"}, "TANDEM_HUB_MQTT_URL"),
    ],
)
def test_bad_values_name_the_env_var(env, key):
    with pytest.raises(ConfigError, match=key):
        HubConfig.load(env=env)


def test_unknown_keys_in_a_file_are_refused(tmp_path):
    path = tmp_path / "hub.toml"
    path.write_text("http_prot = 1\n")
    with pytest.raises(ConfigError, match="http_prot"):
        HubConfig.load(path, env={})


def test_telemetry_drift_and_rollout_settings_from_file_env_and_flags(tmp_path):
    path = tmp_path / "hub.toml"
    path.write_text(
        "[hub]\ntelemetry = false\ndrift_eval_interval_s = 2\ndrift_min_samples = 50\n"
        'public_url = "http://hub.lan:8080"\nrollout_watch_s = 20\n'
    )
    config = HubConfig.load(
        path,
        env={"TANDEM_HUB_TELEMETRY": "yes", "TANDEM_HUB_ROLLOUT_WATCH_S": "none", "TANDEM_HUB_DRIFT_OPEN_ABOVE": "0.3"},
        rollouts=False,
    )
    assert config.telemetry is True and config.rollouts is False
    assert (config.drift_eval_interval_s, config.drift_min_samples, config.drift_open_above) == (2.0, 50, 0.3)
    assert config.public_url == "http://hub.lan:8080" and config.rollout_watch_s is None
    defaults = HubConfig.load(env={})
    assert defaults.telemetry and defaults.rollouts and defaults.public_url is None


@pytest.mark.parametrize(
    "env,key",
    [
        ({"TANDEM_HUB_TELEMETRY": "maybe"}, "TANDEM_HUB_TELEMETRY"),
        ({"TANDEM_HUB_ROLLOUTS": "2"}, "TANDEM_HUB_ROLLOUTS"),
        ({"TANDEM_HUB_PUBLIC_URL": "hub.lan:8080"}, "TANDEM_HUB_PUBLIC_URL"),
        ({"TANDEM_HUB_DRIFT_EVAL_INTERVAL_S": "0"}, "TANDEM_HUB_DRIFT_EVAL_INTERVAL_S"),
        ({"TANDEM_HUB_DRIFT_MIN_SAMPLES": "1.5"}, "TANDEM_HUB_DRIFT_MIN_SAMPLES"),
        ({"TANDEM_HUB_DRIFT_CLOSE_BELOW": "0.9"}, "TANDEM_HUB_DRIFT_CLOSE_BELOW"),
        ({"TANDEM_HUB_DRIFT_WEBHOOK_URL": "ftp://x"}, "TANDEM_HUB_DRIFT_WEBHOOK_URL"),
    ],
)
def test_bad_telemetry_and_rollout_values_name_the_env_var(env, key):
    with pytest.raises(ConfigError, match=key):
        HubConfig.load(env=env)


def test_a_toml_string_where_a_switch_belongs_is_refused(tmp_path):
    path = tmp_path / "hub.toml"
    path.write_text('telemetry = "off-ish"\n')
    with pytest.raises(ConfigError, match="telemetry"):
        HubConfig.load(path, env={})
