"""The web console's browser tests: Debian's Chromium driven by Playwright, a real hub with
telemetry and rollouts on a real Mosquitto, telemetry windows published over MQTT.

Chromium comes from apt (`make system-deps`), never from `playwright install`, so the tests
run offline; without /usr/bin/chromium (or Playwright) they skip with the reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = next(
    (
        p
        for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
        if p and Path(p).exists()
    ),
    None,
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if CHROMIUM is None:
        return "chromium is not installed (make system-deps installs Debian's chromium + chromium-driver as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (it is a dev dependency: pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    why = browser_missing()
    if why:
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def shot(page: Any, name: str, full_page: bool = True) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


# -- the hub --------------------------------------------------------------------------------

# Drift tuned so a test's few dozen windows are enough: 60 s current span, 1 s evaluations.
DRIFT = dict(span_s=60.0, baseline_s=120.0, min_samples=100, min_requests=50)


def start_console_hub(data_dir: Path, mqtt_url: str) -> tuple[Any, list]:
    """A started Hub (telemetry with fast drift evaluation, presence, rollouts); returns (hub, cleanups)."""
    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub

    hub = Hub(
        HubConfig.from_keys(
            {
                "publishers.trust_on_first_use": True,
                "data_dir": data_dir,
                "http.port": 0,
                "grpc.port": 0,
                "mqtt.url": mqtt_url,
                "drift.eval_interval_s": 1.0,
                "drift.span_s": DRIFT["span_s"],
                "drift.baseline_s": DRIFT["baseline_s"],
                "drift.min_samples": DRIFT["min_samples"],
                "drift.min_requests": DRIFT["min_requests"],
                "rollouts.tick_s": 0.1,
                "rollouts.watch_s": 0.6,
            }
        )
    ).start()
    return hub, []


# -- telemetry windows ----------------------------------------------------------------------


def digits_windows(
    manifest_dir: Path,
    digits_dir: Path,
    device_id: str,
    tags: dict[str, str],
    t_end: float,
    normal: int,
    shifted: int,
    window_s: float = 5.0,
    per_window: int = 60,
    seed: int = 0,
) -> list[bytes]:
    """Encoded windows from a device serving the digits model: `normal` windows of test digits,
    then `shifted` windows of the same digits brightened by +0.5 (a camera's exposure gone wrong),
    with less confident answers and more fallbacks. The last window ends at `t_end`."""
    from tandem.edge_agent.telemetry.window import ModelInfo, WindowAggregator, WindowConfig
    from tandem.protocols.manifest import load_manifest
    from tandem.protocols.telemetry_codec import encode_window

    manifest = load_manifest(manifest_dir)
    input_name = next(iter(manifest.drift_reference["inputs"]))
    x_all = np.load(digits_dir / "test.npz")["x"].astype(np.float32)
    rng = np.random.default_rng(seed)
    n = normal + shifted
    t0 = t_end - n * window_s
    agg = WindowAggregator(
        device_id,
        ModelInfo.from_manifest(manifest, "cpu-x86"),
        profile="cpu-x86",
        tags=tags,
        config=WindowConfig(window_s=window_s),
        now=t0,
    )
    out = []
    for i in range(n):
        drifted = i >= normal
        for _ in range(per_window):
            x = x_all[rng.integers(0, len(x_all), size=1)]
            if drifted:
                x = np.clip(x + 0.5, 0, 1).astype(np.float32)
            conf = float(rng.uniform(0.3, 0.7) if drifted else rng.uniform(0.85, 1.0))
            source = "cloud" if conf < 0.5 else "edge"
            latency = float(rng.uniform(8, 20) if source == "cloud" else rng.uniform(1, 3))
            agg.record(source, latency, confidence=conf, label=int(rng.integers(0, 10)), inputs={input_name: x})
        window = agg.close(t0 + (i + 1) * window_s)
        window.sequence = i + 1
        out.append(encode_window(window))
    return out


def publish(mqtt_url: str, device_id: str, payloads: list[bytes]) -> None:
    import paho.mqtt.client as mqtt

    from tandem.protocols.topics import parse_mqtt_url, telemetry_topic

    host, port = parse_mqtt_url(mqtt_url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"web-test-{device_id}", protocol=mqtt.MQTTv5)
    client.connect(host, port)
    client.loop_start()
    try:
        for info in [client.publish(telemetry_topic(device_id), p, qos=1) for p in payloads]:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
