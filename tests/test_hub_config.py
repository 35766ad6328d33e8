"""Hub configuration: sections from TOML, TANDEM_HUB_<SECTION>_<KEY> env overrides, errors that name section.key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.errors import ConfigError


def test_defaults_are_a_first_run_on_one_machine():
    config = HubConfig.load(env={})
    assert config.data_dir == Path("./tandem-data") and config.mqtt.url is None and config.mqtt.broker == "auto"
    assert config.release_key_path == Path("./tandem-data/keys/release.ed25519.pem")


def test_file_then_env_then_flags(tmp_path):
    path = tmp_path / "hub.toml"
    path.write_text('data_dir = "/srv/tandem"\n[http]\nport = 9000\n[grpc]\nport = 9001\n')
    env = {
        "TANDEM_HUB_HTTP_PORT": "9100",
        "TANDEM_HUB_MODELS_DIRS": "/m/a:/m/b",
        "TANDEM_HUB_DEVICES_OFFLINE_AFTER_S": "30",
    }
    config = HubConfig.load(path, env=env, overrides={"grpc.port": 9201, "http.host": None})
    assert (config.http.port, config.grpc.port, config.data_dir) == (9100, 9201, Path("/srv/tandem"))
    assert config.models.dirs == (Path("/m/a"), Path("/m/b")) and config.devices.offline_after_s == 30.0
    assert config.http.host == "127.0.0.1"  # a flag not given (None) leaves the value alone


@pytest.mark.parametrize(
    "env,key",
    [
        ({"TANDEM_HUB_HTTP_PORT": "eighty"}, r"http\.port \(from TANDEM_HUB_HTTP_PORT\)"),
        ({"TANDEM_HUB_HTTP_PORT": "70000"}, r"http\.port \(env TANDEM_HUB_HTTP_PORT\)"),
        ({"TANDEM_HUB_MQTT_BROKER": "rabbit"}, r"mqtt\.broker \(env TANDEM_HUB_MQTT_BROKER\)"),
        ({"TANDEM_HUB_MQTT_URL": "http://x"}, r"mqtt\.url \(env TANDEM_HUB_MQTT_URL\)"),
    ],
)
def test_bad_values_name_the_key_and_the_env_var(env, key):
    with pytest.raises(ConfigError, match=key):
        HubConfig.load(env=env)


def test_unknown_keys_in_a_file_are_refused_with_the_closest_name(tmp_path):
    path = tmp_path / "hub.toml"
    path.write_text("[http]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"http\.prot: unknown key \(did you mean 'port'\?"):
        HubConfig.load(path, env={})
    path.write_text("[htp]\nport = 1\n")
    with pytest.raises(ConfigError, match=r"htp: unknown key \(did you mean 'http'\?"):
        HubConfig.load(path, env={})


def test_unknown_env_names_are_logged_with_the_closest_name(caplog, monkeypatch):
    monkeypatch.setenv("TANDEM_HUB_HTTP_PROT", "1")
    with caplog.at_level(logging.WARNING, logger="tandem.protocols.config_loader"):
        HubConfig.load()
    assert "TANDEM_HUB_HTTP_PROT names no config key" in caplog.text
    assert "did you mean TANDEM_HUB_HTTP_PORT" in caplog.text


@pytest.mark.parametrize(
    "text,named",
    [
        ("[hub]\nhttp_port = 9000\n", r"http_port: .* write \[http\] port = "),
        ("broker = 'embedded'\n", r"broker: .* write \[mqtt\] broker = "),
        ("telemetry = false\n", r"telemetry: .* write \[telemetry\] enabled = "),
        ("[hub]\n", r"\[hub\]: the hub's settings now live in sections"),
    ],
)
def test_a_file_in_the_old_flat_shape_names_the_new_key(tmp_path, text, named):
    path = tmp_path / "hub.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named):
        HubConfig.load(path, env={})


def test_telemetry_drift_and_rollout_settings_from_file_env_and_flags(tmp_path):
    path = tmp_path / "hub.toml"
    path.write_text(
        "[telemetry]\nenabled = false\n[drift]\neval_interval_s = 2\nmin_samples = 50\n"
        '[http]\npublic_url = "http://hub.lan:8080"\n[rollouts]\nwatch_s = 20\n'
    )
    config = HubConfig.load(
        path,
        env={
            "TANDEM_HUB_TELEMETRY_ENABLED": "yes",
            "TANDEM_HUB_ROLLOUTS_WATCH_S": "none",
            "TANDEM_HUB_DRIFT_OPEN_ABOVE": "0.3",
        },
        overrides={"rollouts.enabled": False},
    )
    assert config.telemetry.enabled is True and config.rollouts.enabled is False
    assert (config.drift.eval_interval_s, config.drift.min_samples, config.drift.open_above) == (2.0, 50, 0.3)
    assert config.http.public_url == "http://hub.lan:8080" and config.rollouts.watch_s is None
    defaults = HubConfig.load(env={})
    assert defaults.telemetry.enabled and defaults.rollouts.enabled and defaults.http.public_url is None


@pytest.mark.parametrize(
    "env,key",
    [
        ({"TANDEM_HUB_TELEMETRY_ENABLED": "maybe"}, "telemetry.enabled"),
        ({"TANDEM_HUB_ROLLOUTS_ENABLED": "2"}, "rollouts.enabled"),
        ({"TANDEM_HUB_HTTP_PUBLIC_URL": "hub.lan:8080"}, "http.public_url"),
        ({"TANDEM_HUB_DRIFT_EVAL_INTERVAL_S": "0"}, "drift.eval_interval_s"),
        ({"TANDEM_HUB_DRIFT_MIN_SAMPLES": "1.5"}, "drift.min_samples"),
        ({"TANDEM_HUB_DRIFT_CLOSE_BELOW": "0.9"}, "drift.close_below"),
        ({"TANDEM_HUB_DRIFT_WEBHOOK_URL": "ftp://x"}, "drift.webhook_url"),
        ({"TANDEM_HUB_HARD_EXAMPLES_MAX": "-1"}, "hard_examples.max"),
    ],
)
def test_bad_telemetry_and_rollout_values_name_the_key_and_env_var(env, key):
    with pytest.raises(ConfigError, match=key) as err:
        HubConfig.load(env=env)
    assert next(iter(env)) in str(err.value)


def test_a_toml_string_where_a_switch_belongs_is_refused(tmp_path):
    path = tmp_path / "hub.toml"
    path.write_text('[telemetry]\nenabled = "off-ish"\n')
    with pytest.raises(ConfigError, match=r"telemetry\.enabled: expected true or false"):
        HubConfig.load(path, env={})


def test_from_keys_and_with_overrides_validate_like_a_file(tmp_path):
    config = HubConfig.from_keys({"data_dir": tmp_path, "http.port": 0, "mqtt.url": "mqtt://127.0.0.1:1"})
    assert (config.http.port, config.mqtt.url) == (0, "mqtt://127.0.0.1:1")
    assert config.with_overrides({"grpc.port": 0}).grpc.port == 0
    with pytest.raises(ConfigError, match=r"grpc\.port"):
        config.with_overrides({"grpc.port": 70000})
    with pytest.raises(ConfigError, match=r"http_port: unknown key"):
        HubConfig.from_keys({"http_port": 0})


def test_the_example_config_lists_every_key_with_its_default():
    import tomllib

    from tandem.cloud_hub.config import SECTIONS

    path = Path(__file__).resolve().parents[1] / "examples" / "hub" / "hub.toml"
    assert HubConfig.load(path, env={}) == HubConfig()  # the file states the defaults
    text = path.read_text()
    data = tomllib.loads(text)
    for section, keys in SECTIONS.items():
        table = data if not section else data[section]
        for key in keys:
            assert key in table or f"# {key} = " in text, f"examples/hub/hub.toml lacks {section}.{key}"
