"""The fleet console page in headless Chromium against a real hub: login, a device appearing,
a rollout started from the page to completion on simulated devices running the real OTA
client, a drift alert from telemetry published over MQTT, scopes, and a narrow window.

Screenshots land in artifacts/screenshots/ (kept by CI as test artifacts).
"""

from __future__ import annotations

import re
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from ota_fixtures import MODEL, MOSQUITTO, Broker, SimDevice, releases
from web_fixtures import digits_windows, publish, shot, start_console_hub

N_DEVICES = 4
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
POLL = "?poll=1000"


# -- fast checks of the page's server side (no browser) --------------------------------------


def test_console_is_served_with_a_strict_csp_and_the_root_lands_on_it(tmp_path):
    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub

    with Hub(
        HubConfig.from_keys({"data_dir": tmp_path / "hub", "http.port": 0, "mqtt.url": "mqtt://127.0.0.1:1"})
    ) as hub:
        api = TestClient(hub.app)
        assert api.get("/", follow_redirects=False).headers["location"] == "/console/"
        page = api.get("/console/")
        assert page.status_code == 200 and 'src="app.js"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "http" not in re.sub(r"https?://www\.w3\.org", "", api.get("/console/charts.js").text), "no CDN"
        js = api.get("/console/app.js")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]
        assert api.get("/console/../hub.py").status_code == 404
        assert api.get("/v1/auth/whoami").status_code == 401
        token = hub.tokens.create("viewer", "read").token
        me = api.get("/v1/auth/whoami", headers={"Authorization": f"Bearer {token}"}).json()
        assert me["name"] == "viewer" and me["scope"] == "read" and me["allows"] == ["read"]


def test_chart_point_of_a_window_has_rates_confidence_and_input_psi():
    from tandem.cloud_hub.web.series import histogram_quantile, window_point
    from tandem.edge_agent.telemetry.window import ModelInfo, WindowAggregator

    ref = {"inputs": {"x": {"mean": {"edges": [-0.5, 0.0, 0.5], "counts": [250, 250, 250, 250]}}}}
    agg = WindowAggregator("d1", ModelInfo("toy", "1.0.0", ref), now=0.0)
    rng = np.random.default_rng(0)
    for i in range(200):  # per-sample means spread like the reference's (quartiles at -0.5, 0, 0.5)
        agg.record(
            "cloud" if i < 50 else "edge", 4.0, 0.9 if i % 2 else 0.6, 1, {"x": np.full((1, 8), rng.normal(0, 0.74))}
        )
    same = window_point(agg.close(10.0), {"x.mean": [250, 250, 250, 250]})
    for _ in range(40):
        agg.record("edge", 4.0, 0.9, 1, {"x": rng.normal(2.0, 0.1, (1, 8))})
    moved = window_point(agg.close(20.0), {"x.mean": [250, 250, 250, 250]})
    assert same["requests"] == 200 and same["fallback_rate"] == pytest.approx(0.25)
    assert same["confidence_mean"] == pytest.approx(0.775, abs=0.03)  # bin centres of 0.6 and 0.9
    assert same["latency_mean_ms"] == pytest.approx(4.0) and same["latency_p95_ms"] == 5.0
    assert moved["input_psi"]["x.mean"] > 1.0 > 0.25 > same["input_psi"]["x.mean"]
    assert window_point(agg.close(30.0) or _empty_window(), {})["fallback_rate"] is None
    assert histogram_quantile([0, 0, 0], [1, 2], 0.5) is None


def _empty_window():
    from tandem.protocols.telemetry_codec import TelemetryWindow

    return TelemetryWindow(device_id="d1", sequence=3, model_name="toy", model_version="1.0.0")


# -- the page in Chromium ----------------------------------------------------------------------------

browser_tests = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")]


@pytest.fixture(scope="module")
def console(digits_dir, tmp_path_factory):
    from tandem.edge_agent.ota.machine import WatchPolicy

    rel = releases(digits_dir, lambda: tmp_path_factory.mktemp("web-releases"))
    root = tmp_path_factory.mktemp("web-console")
    broker = Broker(root / "mosquitto")
    hub, cleanups = start_console_hub(root / "hub", broker.url)
    devices: list[SimDevice] = []
    try:
        for version in ("1.0.0", "1.1.0"):
            hub.registry.register_dir(rel[version])
        tokens = {scope: hub.tokens.create(f"web-{scope}", scope).token for scope in ("read", "operate")}
        x = np.load(digits_dir / "test.npz")
        inputs = x[x.files[0]].astype(np.float32)
        watch = WatchPolicy(watch_s=0.6, min_requests=20, max_fallback_rise=0.3, max_latency_ratio=100.0)
        for i in range(N_DEVICES):
            dev_id = f"lab-{i:02d}"
            hub.devices.register(dev_id, "cpu-x86", "0.1.0", {"site": "lab"}, MODEL, "1.0.0")
            devices.append(
                SimDevice(
                    dev_id,
                    root / "devices",
                    rel["1.0.0"],
                    broker.url,
                    tokens["read"],
                    hub.key.public_pem,
                    inputs,
                    watch,
                ).start()
            )
        assert all(d.client.wait_subscribed(10) for d in devices)
        assert hub.rollouts.wait_subscribed(10)
        yield {
            "hub": hub,
            "url": hub.http_url + "/console/" + POLL,
            "tokens": tokens,
            "devices": devices,
            "broker": broker,
            "releases": rel,
            "cleanups": cleanups,
        }
    finally:
        for d in devices:
            d.stop()
        for fn in cleanups:
            fn()
        hub.stop()
        broker.stop()


@pytest.fixture
def page(browser, console):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    # CSP violations ("Refused to ...") and other console errors, but not the API's own 4xx answers
    p.on("console", lambda msg: msg.type == "error" and "status of 4" not in msg.text and errors.append(msg.text))
    p.on("dialog", lambda dialog: dialog.accept())
    yield p
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def login(page, console, scope: str = "operate") -> None:
    page.goto(console["url"])
    page.fill("#token", console["tokens"][scope])
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#nav", state="visible", timeout=10_000)


@pytest.mark.usefixtures("browser", "console")  # browser first: a missing chromium skips before the fleet starts
class TestConsoleInChromium:
    pytestmark = browser_tests

    def test_a_bad_token_is_refused_a_good_one_gets_in_and_logout_forgets_it(self, page, console):
        from playwright.sync_api import expect

        page.goto(console["url"])
        expect(page.locator("#login")).to_be_visible()
        page.fill("#token", "tdm_000000000000_" + "x" * 43)
        page.click("#login-form button[type=submit]")
        expect(page.locator("#login-error")).to_contain_text("refused", timeout=10_000)
        expect(page.locator("#nav")).to_be_hidden()
        shot(page, "login-refused")
        login(page, console)
        expect(page.locator("#who-name")).to_have_text("web-operate · operate")
        assert page.evaluate("sessionStorage.getItem('tandem.token')") == console["tokens"]["operate"]
        page.reload()  # the token survives a reload of the tab
        expect(page.locator("#nav")).to_be_visible(timeout=10_000)
        page.click("#logout")
        expect(page.locator("#login")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('tandem.token')") is None

        # a token revoked while the page is open sends it back to the login with the reason
        hub = console["hub"]
        temp = hub.tokens.create("web-temp", "read")
        page.fill("#token", temp.token)
        page.click("#login-form button[type=submit]")
        expect(page.locator("#nav")).to_be_visible(timeout=10_000)
        hub.tokens.revoke(temp.info.token_id)
        expect(page.locator("#login-error")).to_contain_text("no longer accepted", timeout=10_000)
        expect(page.locator("#login-error")).to_contain_text("revoked")

    def test_a_device_appears_when_its_agent_starts_and_api_text_is_never_markup(self, page, console, tmp_path):
        from playwright.sync_api import expect

        from tandem.edge_agent.telemetry import TelemetryService
        from tandem.protocols.manifest import load_manifest

        login(page, console, "read")
        expect(page.locator("#count-total")).to_have_text(str(N_DEVICES), timeout=10_000)
        assert page.locator("tr[data-device='cam-new']").count() == 0
        # an agent starting with telemetry on: its retained MQTT status is all the hub needs to list it
        agent = TelemetryService(
            console["broker"].url,
            "cam-new",
            load_manifest(console["releases"]["1.0.0"]),
            tmp_path / "cam-new",
            profile="cpu-arm",
            tags={"site": "lyon", "note": XSS},
        ).start()
        console["cleanups"].append(agent.stop)
        row = page.locator("tr[data-device='cam-new']")
        expect(row).to_be_visible(timeout=10_000)  # polling picks it up without a reload
        expect(row).to_contain_text("online")
        expect(row).to_contain_text(XSS)  # shown as text ...
        assert page.evaluate("window.__xss") is None  # ... never run
        assert page.locator("section.group[data-profile='cpu-arm']").count() == 1
        page.select_option("#filter-profile", "cpu-arm")
        expect(page.locator("tr[data-device]")).to_have_count(1, timeout=10_000)
        page.select_option("#filter-profile", "")
        page.select_option("#filter-status", "offline")  # everyone was heard from just now
        expect(page.locator("#fleet-groups")).to_contain_text("No device matches", timeout=10_000)
        page.select_option("#filter-status", "online")
        expect(page.locator("tr[data-device]")).to_have_count(N_DEVICES + 1, timeout=10_000)
        page.fill("#filter-tag", "site=lab")
        page.press("#filter-tag", "Enter")
        expect(page.locator("tr[data-device]")).to_have_count(N_DEVICES, timeout=10_000)
        page.fill("#filter-tag", "not a filter")
        page.press("#filter-tag", "Enter")
        expect(page.locator("#view .error")).to_contain_text("key=value", timeout=10_000)
        page.fill("#filter-tag", "")
        page.press("#filter-tag", "Enter")
        expect(page.locator("tr[data-device]")).to_have_count(N_DEVICES + 1, timeout=10_000)
        shot(page, "fleet")

    def test_a_rollout_started_from_the_page_runs_to_completion_and_can_be_rolled_back(self, page, console):
        from playwright.sync_api import expect

        login(page, console)
        page.click("#nav a[data-view=rollouts]")
        expect(page.locator("#ro-model option")).to_have_count(1, timeout=10_000)
        expect(page.locator("#ro-version option[value='1.1.0']")).to_have_count(1, timeout=10_000)
        page.select_option("#ro-version", "1.1.0")
        page.fill("#ro-select", "profile=cpu-x86, site=lab")
        page.fill("#ro-waves", "50,100")
        page.click("#rollout-form summary")
        page.fill("#ro-min-reporting", "1")
        page.fill("#ro-timeout", "60")
        page.fill("#ro-max-latency", "100")
        # a bad wave list is refused with the hub's reason, and nothing starts
        page.fill("#ro-waves", "50,20")
        page.click("#ro-start")
        expect(page.locator("#rollout-form .error")).to_contain_text("Not started", timeout=10_000)
        page.fill("#ro-waves", "50,100")
        page.click("#ro-start")
        page.wait_for_url(re.compile(r"#/rollouts/[^/]+$"), timeout=10_000)
        expect(page.locator("section.wave")).to_have_count(2, timeout=10_000)
        expect(page.locator("#rollout-status")).to_have_text("completed", timeout=90_000)
        expect(page.locator("li.chip[data-state=committed]")).to_have_count(N_DEVICES, timeout=10_000)
        assert page.locator("section.wave[data-wave='1'] li.chip").count() == N_DEVICES // 2
        expect(page.locator("button[data-action=pause]")).to_be_disabled()
        shot(page, "rollout-completed")
        assert {d.serving for d in console["devices"]} == {"1.1.0"}

        page.click("button[data-action=rollback]")  # confirm() is accepted by the page fixture
        expect(page.locator("#rollout-status")).to_have_text("rolled_back", timeout=30_000)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and {d.serving for d in console["devices"]} != {"1.0.0"}:
            time.sleep(0.2)
        assert {d.serving for d in console["devices"]} == {"1.0.0"}
        expect(page.locator("button[data-action=rollback]")).to_be_disabled(timeout=10_000)
        shot(page, "rollout-rolled-back")

    def test_a_drift_alert_appears_and_the_device_charts_show_the_shift(self, page, console, digits_dir):
        from playwright.sync_api import expect

        hub = console["hub"]
        login(page, console, "read")
        page.click("#nav a[data-view=alerts]")
        expect(page.locator("#alerts-table")).to_contain_text("No drift alerts", timeout=10_000)
        hub.devices.register("cam-drift", "cpu-x86", "0.1.0", {"site": "field"}, MODEL, "1.0.0")
        payloads = digits_windows(
            console["releases"]["1.0.0"],
            digits_dir,
            "cam-drift",
            {"site": "field"},
            t_end=time.time(),
            normal=4,
            shifted=8,
            per_window=100,
        )
        publish(console["broker"].url, "cam-drift", payloads)
        row = page.locator("tr[data-alert].open").filter(has_text="input:")
        expect(row.first).to_be_visible(timeout=60_000)
        expect(row.first).to_contain_text("digits 1.0.0")
        expect(row.first).to_contain_text("site=field")
        expect(page.locator("#alert-count")).to_be_visible()
        shot(page, "drift-alerts")

        page.goto(console["url"] + "#/device/cam-drift")
        charts = page.locator("#device-charts")
        expect(charts.locator("figure.chart")).to_have_count(4, timeout=10_000)
        for chart in ("latency", "fallback", "confidence", "drift"):
            assert charts.locator(f"#chart-{chart} path.line").count() >= 1, chart
        expect(charts.locator("#chart-drift line.threshold")).to_have_count(1)
        points = httpx.get(
            hub.http_url + "/v1/console/devices/cam-drift/series",
            headers={"Authorization": "Bearer " + console["tokens"]["read"]},
        ).json()["points"]
        assert len(points) == len(payloads)
        before, after = points[:4], points[4:]
        # per-window PSI over ~100 samples is noisy (~0.1-0.3 when nothing changed); the shift gives ~2
        assert max(p["input_psi_max"] for p in before) < 0.6 < 1.0 < min(p["input_psi_max"] for p in after)
        assert max(p["fallback_rate"] for p in before) < min(p["fallback_rate"] for p in after)
        assert max(p["confidence_mean"] for p in after) < min(p["confidence_mean"] for p in before)
        shot(page, "device-drift")

    def test_pause_resume_and_abort_buttons_steer_a_running_rollout(self, page, console):
        from playwright.sync_api import expect

        login(page, console)
        page.click("#nav a[data-view=rollouts]")
        expect(page.locator("#ro-version option[value='1.1.0']")).to_have_count(1, timeout=10_000)
        page.select_option("#ro-version", "1.1.0")
        page.fill("#ro-select", "site=field")  # cam-drift: registered, but no OTA client answers it
        page.fill("#ro-waves", "100")
        page.click("#ro-start")
        page.wait_for_url(re.compile(r"#/rollouts/[^/]+$"), timeout=10_000)
        status = page.locator("#rollout-status")
        expect(status).to_have_text("running", timeout=10_000)
        expect(page.locator("li.chip[data-device='cam-drift']")).to_be_visible()
        expect(page.locator("button[data-action=resume]")).to_be_disabled()
        for action, after in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
            page.click(f"button[data-action={action}]")
            expect(status).to_have_text(after, timeout=10_000)
        for action in ("pause", "resume", "abort", "rollback"):
            expect(page.locator(f"button[data-action={action}]")).to_be_disabled()
        expect(page.locator("#rollout-events")).to_contain_text("aborted")

    def test_a_read_token_sees_no_action_buttons_and_no_start_form(self, page, console):
        from playwright.sync_api import expect

        login(page, console, "read")
        page.click("#nav a[data-view=rollouts]")
        expect(page.locator("#read-only-note")).to_be_visible(timeout=10_000)
        assert page.locator("#rollout-form").count() == 0
        page.locator("a.rollout-link").first.click()
        expect(page.locator("#rollout-status")).to_be_visible(timeout=10_000)
        expect(page.locator("section.wave").first).to_be_visible()
        assert page.locator("#rollout-actions button").count() == 0
        # and the API agrees: the buttons would not have worked
        rid = page.url.rsplit("/", 1)[-1]
        r = httpx.post(
            console["hub"].http_url + f"/v1/rollouts/{rid}/pause",
            headers={"Authorization": "Bearer " + console["tokens"]["read"]},
        )
        assert r.status_code == 403

    def test_models_page_lists_variants_with_the_compilers_metrics(self, page, console):
        from playwright.sync_api import expect

        login(page, console, "read")
        page.click("#nav a[data-view=models]")
        card = page.locator("section.model[data-model='digits']")
        expect(card).to_be_visible(timeout=10_000)
        expect(card.locator("tr[data-variant]").first).to_be_visible()
        expect(card).to_contain_text("agreement")
        expect(card.locator("tr[data-variant]").first).to_contain_text("%")
        expect(card).to_contain_text("cpu-x86")
        expect(card.locator(".version-picker option")).to_have_count(2)
        shot(page, "models")

    def test_a_narrow_window_stacks_the_page_without_sideways_scrolling(self, browser, console):
        from playwright.sync_api import expect

        context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
        p = context.new_page()
        try:
            login(p, console)
            for route, ready, name in (
                ("#/fleet", "tr[data-device]", "narrow-fleet"),
                ("#/device/cam-drift", "#chart-drift path.line", "narrow-device"),
                ("#/rollouts", "tr[data-rollout]", "narrow-rollouts"),
            ):
                p.goto(console["url"] + route)
                expect(p.locator(ready).first).to_be_visible(timeout=15_000)
                if route == "#/rollouts":
                    expect(p.locator("#ro-version option")).not_to_have_count(0, timeout=10_000)
                overflow = p.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 1, f"{route}: {overflow}px wider than the window"
                shot(p, name)
            # tables turn into labelled cards: the header row is hidden, cells carry their label
            p.goto(console["url"] + "#/fleet")
            expect(p.locator("tr[data-device]").first).to_be_visible(timeout=10_000)
            assert p.locator("thead").first.is_hidden()
        finally:
            context.close()
