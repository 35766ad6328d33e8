"""Model versions for the OTA tests: the real compiler's digits output, and derived releases.

`derive` copies a compiled dir and edits its manifest (version, expiry, profiles,
golden outputs); the hub re-signs whatever it registers, which is what devices trust.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

import hub_fixtures
from tandem.sim import releases as sim_releases
from telemetry_fixtures import MOSQUITTO as MOSQUITTO  # the OTA tests' skip check
from telemetry_fixtures import Mosquitto

PROFILE = "cpu-x86"
MODEL = "digits"


def compile_digits(digits_dir: Path, out: Path, version: str, key: Path, onnx_path: Path | None = None) -> Path:
    """The OTA tests' release `version` of the digits edge model (or `onnx_path`, made from it) for cpu-x86."""
    return hub_fixtures.compile_digits(
        digits_dir, "edge", out, name=MODEL, key=key, profiles=(PROFILE,), version=version, model=onnx_path
    )


def collapsed_onnx(digits_dir: Path, out: Path) -> Path:
    """edge.onnx with every weight scaled to ~0: it still runs, its answers are near-uniform (low confidence)."""
    return sim_releases.collapsed_onnx(digits_dir / "edge.onnx", out)


# derive(src, dst, version, edit) and scramble_golden(doc, dir): the simulator's, so both build bad releases alike;
# derived releases are signed by the tests' publisher, as a publisher would sign a release it edited.
def derive(src: Path, dst: Path, version: str, edit: Callable[[dict[str, Any], Path], None] | None = None) -> Path:
    from hub_registry_fixtures import TEST_PUBLISHER

    return sim_releases.derive(src, dst, version, edit, key=TEST_PUBLISHER)


scramble_golden = sim_releases.scramble_golden


def expire(doc: dict[str, Any], root: Path) -> None:
    doc["expires_at"] = "2001-01-01T00:00:00+00:00"


def other_profile(doc: dict[str, Any], root: Path) -> None:
    """Retarget the manifest at cpu-arm only."""
    doc["profiles"] = {"cpu-arm": doc["profiles"][PROFILE]}
    doc["target_profiles"] = ["cpu-arm"]


# -- a real broker and simulated devices (OTA client + store + a model served through load_session) --


class Broker(Mosquitto):
    """Mosquitto on a free loopback port, started at once, config and log in `workdir`; no persistence."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, persistence=False)
        self.start()


UNREACHABLE_MQTT = "mqtt://127.0.0.1:1"  # never contacted: a hub that serves downloads only


@dataclass
class OtaHub:
    """A running hub for the OTA tests, what devices are given to reach it, and an operator's REST client."""

    hub: Any  # cloud_hub.hub.Hub
    root: Path  # the hub's data dir, broker and release.pem are under it
    broker: Mosquitto | None
    pem: Path  # the hub's release public key, as a device's ota.trusted_key file
    device_token: str  # read scope: what devices download with
    operator_token: str  # operate scope: starts and steers rollouts
    http: Any  # httpx.Client on the hub's URL with the operator token


@contextmanager
def ota_hub(
    root: Path,
    releases: Iterable[Path] = (),
    settings: Mapping[str, Any] | None = None,
    *,
    broker: bool = True,
    persistence: bool = False,
    rollouts: Mapping[str, Any] | None = None,
) -> Iterator[OtaHub]:
    """A real hub in `root`/hub on free ports, publishers trusted on first use, `releases` registered; its own
    Mosquitto in `root`/mosquitto (with `persistence`, it keeps sessions across a restart), or with
    `broker=False` an unreachable one. `settings` are more HubConfig keys; `rollouts` are attach_rollouts
    settings to replace the default service with. Returns once rollouts and telemetry (when running) are
    subscribed; stops the hub, then the broker."""
    import httpx

    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub

    mosquitto = (Mosquitto(root / "mosquitto", persistence=persistence).start()) if broker else None
    hub = Hub(
        HubConfig.from_keys(
            {
                "publishers.trust_on_first_use": True,
                "data_dir": root / "hub",
                "http.port": 0,
                "grpc.port": 0,
                "mqtt.url": mosquitto.url if mosquitto is not None else UNREACHABLE_MQTT,
                **(settings or {}),
            }
        )
    )
    http = None
    try:
        hub.start()
        for path in releases:
            hub.registry.register_dir(path)
        if rollouts is not None:
            from tandem.cloud_hub.rollouts.attach import attach_rollouts

            attach_rollouts(hub, **rollouts)  # hub.stop() stops it
        if mosquitto is not None:
            for service in (hub.rollouts, hub.telemetry and hub.telemetry.ingest):
                assert service is None or service.wait_subscribed(10), f"{service!r} never subscribed"
        pem = root / "release.pem"
        key = hub.key.public_pem
        pem.write_text(key if isinstance(key, str) else key.decode())
        operator = hub.tokens.create("operator", "operate").token
        http = httpx.Client(base_url=hub.http_url, headers={"Authorization": f"Bearer {operator}"}, timeout=10)
        yield OtaHub(hub, root, mosquitto, pem, hub.tokens.create("fleet", "read").token, operator, http)
    finally:
        if http is not None:
            http.close()
        hub.stop()
        if mosquitto is not None:
            mosquitto.stop()


class SimDevice:
    """One device: the real OTA client and A/B store; `probe` serves a batch of digits through the
    active model (real load_session) and counts answers below `threshold` as fallbacks."""

    def __init__(
        self,
        device_id: str,
        root: Path,
        initial_dir: Path,
        mqtt_url: str,
        token: str,
        trusted_pem: str,
        inputs: np.ndarray,
        watch: Any,
        threshold: float = 0.5,
        batch: int = 32,
    ) -> None:
        from tandem.edge_agent.model import load_model
        from tandem.edge_agent.ota.client import OtaClient, OtaClientConfig

        self.device_id = device_id
        self._load = load_model
        self.client = OtaClient(
            OtaClientConfig(
                device_id, PROFILE, mqtt_url, root / device_id, trusted_pem, hub_token=token, watch=watch, poll_s=0.05
            ),
            on_switch=self.swap,
            health=self.probe,
        )
        self.client.open_store()
        if self.client.store.active_version is None:
            self.client.store.install_initial(initial_dir)
        self.model = load_model(self.client.store.active_dir, PROFILE)
        self.inputs = inputs[:batch]
        self.threshold = threshold
        self.switches = 0

    @property
    def serving(self) -> str:
        return self.model.version

    def swap(self, model_dir: Path) -> None:
        new = self._load(model_dir, PROFILE)
        new.session.run({new.variant.inputs[0].name: self.inputs[:1]})  # warm up, as an agent does before serving
        old, self.model = self.model, new
        old.close()
        self.switches += 1

    def probe(self) -> Any:
        from tandem.edge_agent.ota.machine import HealthFigures

        name = self.model.variant.inputs[0].name
        t0 = time.perf_counter()
        probs = self.model.session.run({name: self.inputs})[0]
        ms = (time.perf_counter() - t0) * 1000 / len(self.inputs)
        return HealthFigures(len(self.inputs), 0, int((probs.max(axis=1) < self.threshold).sum()), ms)

    def start(self) -> "SimDevice":
        self.client.start()
        return self

    def stop(self) -> None:
        self.client.stop()
        self.model.close()


def start_devices(
    env: OtaHub,
    devices: list[Any],
    ids: Iterable[str],
    initial: Path,
    digits_dir: Path,
    watch: Any,
    make: Callable[..., SimDevice] = SimDevice,
) -> None:
    """Register each device of `ids` at `env`'s hub (cpu-x86, site lab) and start `make(...)` (a SimDevice's
    arguments) on release `initial` serving the digits test set, appended to `devices` as each starts so the
    caller's `finally` stops what did; returns once every device is subscribed to its OTA commands."""
    x = np.load(digits_dir / "test.npz")
    inputs = x[x.files[0]].astype(np.float32)
    for dev_id in ids:
        env.hub.devices.register(dev_id, PROFILE, "test", {"site": "lab"})
        device = make(
            dev_id,
            env.root / "devices",
            initial,
            env.broker.url,
            env.device_token,
            env.hub.key.public_pem,
            inputs,
            watch,
        )
        devices.append(device.start())
    assert all(d.client.wait_subscribed(10) for d in devices)


_RELEASES: dict[str, dict[str, Path]] = {}


def releases(digits_dir: Path, root_factory: Callable[[], Path]) -> dict[str, Path]:
    """The OTA tests' releases, compiled once per test session: 1.0.0 and 1.1.0 (good), 1.2.0 (fails
    its self-test), 1.3.0 (collapsed: passes its self-test, answers with no confidence)."""
    key = str(digits_dir)
    if key not in _RELEASES:
        root = root_factory()
        pem = root / "compiler.pem"
        v1 = compile_digits(digits_dir, root / "1.0.0", "1.0.0", pem)
        _RELEASES[key] = {
            "1.0.0": v1,
            "1.1.0": derive(v1, root / "1.1.0", "1.1.0"),
            "1.2.0": derive(v1, root / "1.2.0", "1.2.0", scramble_golden),
            "1.3.0": compile_digits(
                digits_dir, root / "1.3.0", "1.3.0", pem, onnx_path=collapsed_onnx(digits_dir, root / "collapsed.onnx")
            ),
        }
    return _RELEASES[key]
