"""One hub process: REST console, the fleet's MQTT broker and gRPC inference side by side."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton

from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.errors import HubError
from tandem.cloud_hub.hub import Hub
from hub_registry_fixtures import make_model_dir


def test_serve_with_a_model_dir_answers_rest_and_v2_grpc(tmp_path, digits_dir):
    model = make_model_dir(digits_dir, tmp_path / "cloud", onnx_name="cloud.onnx")
    config = HubConfig.from_keys(
        {
            "data_dir": tmp_path / "data",
            "http.port": 0,
            "grpc.port": 0,
            "mqtt.broker": "embedded",
            "models.dirs": (model,),
        }
    )
    with Hub(config).start() as hub:
        urls = hub.urls()
        assert set(urls) == {"http", "docs", "grpc", "mqtt"}
        token = hub.tokens.create("ops", "read").token
        info = httpx.get(f"{urls['http']}/v1/hub", headers={"Authorization": f"Bearer {token}"}).json()
        assert info["grpc_url"] == urls["grpc"] and info["mqtt_url"] == urls["mqtt"] and info["broker"] == "embedded"
        client = triton.InferenceServerClient(urls["grpc"])
        try:
            assert client.is_server_ready() and client.is_model_ready("digits")
            x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
            inp = triton.InferInput("input", [3, 64], "FP32")
            inp.set_data_from_numpy(x)
            probs = client.infer("digits", [inp]).as_numpy("probabilities")
        finally:
            client.close()
        assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def test_a_failed_start_stops_what_it_started(tmp_path):
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    hub = Hub(
        HubConfig.from_keys(
            {
                "data_dir": tmp_path / "data",
                "http.port": 0,
                "grpc.port": 0,
                "mqtt.broker": "embedded",
                "models.dirs": (bad,),
            }
        )
    )
    with pytest.raises(HubError):
        hub.start()
    assert hub.mqtt_url is None and hub.http_url is None  # the broker it had started is gone
    with pytest.raises(HubError, match="create a new Hub"):
        hub.start()


class Recorder:
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    def start(self, hub: Hub) -> None:
        if self.fail:
            raise HubError(f"{self.name} cannot start")
        self.log.append(f"start {self.name} mqtt={hub.mqtt_url is not None}")

    def stop(self) -> None:
        self.log.append(f"stop {self.name}")


def test_services_start_after_the_broker_and_stop_in_reverse(tmp_path):
    events: list[str] = []
    hub = Hub(HubConfig.from_keys({"data_dir": tmp_path / "a", "http.port": 0, "mqtt.broker": "embedded"}))
    hub.add_service(Recorder("ingest", events))
    hub.add_service(Recorder("drift", events))
    with hub.start():
        pass
    assert events == ["start ingest mqtt=True", "start drift mqtt=True", "stop drift", "stop ingest"]

    events.clear()
    hub = Hub(HubConfig.from_keys({"data_dir": tmp_path / "b", "http.port": 0, "mqtt.url": "mqtt://127.0.0.1:1"}))
    hub.add_service(Recorder("ok", events))
    hub.add_service(Recorder("broken", events, fail=True))
    with pytest.raises(HubError, match="broken cannot start"):
        hub.start()
    assert events == ["start ok mqtt=True", "stop ok"]
