"""Runs one OTA command through the steps of `machine`, doing the I/O each step needs.

No MQTT here: `publish` is called at every step and the agent's hooks are plain
callables, so tests and simulated fleets drive an Updater directly. The active model
changes only through `ModelStore.switch/rollback`, after the new slot is complete,
verified and self-tested.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tandem.edge_agent.ota.download import DownloadConfig, Downloader
from tandem.edge_agent.ota.errors import OtaError, SelfTestError, SelfTestHarnessError, VerificationError
from tandem.edge_agent.ota.hubclock import CLOCK_TOLERANCE_S, HubClock
from tandem.edge_agent.ota.machine import HealthFigures, State, WatchPolicy, advance, decide_health
from tandem.edge_agent.ota.selftest import SelfTestResult, run_selftest
from tandem.edge_agent.ota.store import ModelStore, atomic_write
from tandem.edge_agent.ota.verify import files_for, verify_files, verify_manifest_doc
from tandem.protocols.manifest import MANIFEST_FILENAME, Manifest, Variant, parse_version
from tandem.protocols.ota import OtaCommand

log = logging.getLogger(__name__)

SELFTEST_ATTEMPTS = 3  # a harness error (not a verdict) is retried this many times in all before the install fails
SELFTEST_RETRY_S = 0.2  # the wait before the next attempt grows by this much each time

Publish = Callable[[str, str, str, dict], None]  # (step, result, reason, health)
SwitchHook = Callable[[Path], None]  # serve the model dir; raise if it cannot
HealthProbe = Callable[[], HealthFigures]  # figures since the previous call


@dataclass(frozen=True)
class UpdaterConfig:
    profile: str
    download: DownloadConfig = field(default_factory=DownloadConfig)
    watch: WatchPolicy = field(default_factory=WatchPolicy)
    poll_s: float = 0.25


def _no_health() -> HealthFigures:
    return HealthFigures()


class Updater:
    def __init__(
        self,
        store: ModelStore,
        trusted_key: Ed25519PublicKey,
        config: UpdaterConfig,
        on_switch: SwitchHook,
        publish: Publish,
        health: HealthProbe = _no_health,
        clock: Callable[[], float] = time.time,
        cancel: threading.Event | None = None,
        hub_clock: HubClock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`hub_clock`: the device's estimate of the hub's time; a manifest's expiry is judged on it.
        `clock` (wall time) judges expiry; `monotonic` times the health watch, so a step of the wall
        clock (NTP, an RTC set at boot) neither ends a watch early nor stretches it by the step."""
        self.store = store
        self.trusted_key = trusted_key
        self.config = config
        self.on_switch = on_switch
        self.publish = publish
        self.health = health
        self.clock = clock
        self.monotonic = monotonic
        self.cancel = cancel or threading.Event()
        self.hub_clock = hub_clock or HubClock()
        self.state: State = "idle"

    # -- commands ----------------------------------------------------------------------

    def run(self, cmd: OtaCommand) -> State:
        return self.rollback(cmd) if cmd.action == "rollback" else self.install(cmd)

    def install(self, cmd: OtaCommand) -> State:
        """Download, verify, stage, self-test, switch, watch; returns the terminal state."""
        if self.store.active_version == cmd.version and self.store.state.trial is None:
            # the figures it was committed on: a hub that lost them (its own crash) must not pass a gate blind
            self.publish(
                "committed", "ok", f"{cmd.model} {cmd.version} is already active", dict(self.store.state.health or {})
            )
            return "committed"
        accepted = self.store.state.max_accepted
        if accepted is not None and parse_version(cmd.version) <= parse_version(accepted):
            reason = (
                f"{cmd.version} is not higher than the highest accepted version {accepted} "
                "(anti-rollback; a downgrade must be released as a higher version)"
            )
            self.publish("rejected", "error", reason, {})
            return "failed"
        self.state = "idle"
        slot: str | None = None
        try:
            self._enter("ok", "")  # -> downloading
            downloader = Downloader(self.config.download, self.cancel)
            try:
                doc = downloader.fetch_json(cmd.manifest_url)
                manifest, variant = verify_manifest_doc(
                    doc,
                    trusted_key=self.trusted_key,
                    cmd=cmd,
                    profile=self.config.profile,
                    max_accepted=accepted,
                    now=self.clock() + (self.hub_clock.offset_s or 0.0),
                    tolerance_s=CLOCK_TOLERANCE_S,
                )
                entries = files_for(manifest, variant)
                staging = self.store.staging_dir(f"{cmd.model}-{cmd.version}-{cmd.manifest_sha256[:12]}")
                for entry in entries:
                    downloader.fetch_file(
                        f"{cmd.artifact_base_url.rstrip('/')}/{entry.sha256}",
                        staging / entry.path,
                        entry.size,
                        entry.sha256,
                    )
            finally:
                downloader.close()
            self._enter("ok", f"{len(entries)} files, {sum(e.size for e in entries)} bytes")  # -> verifying
            verify_files(staging, entries)
            atomic_write(staging / MANIFEST_FILENAME, manifest.to_json().encode("utf-8"))
            slot = self.store.stage(staging, cmd.version)
            self._enter("ok", f"variant {variant.id}")  # -> staged
            self._enter("ok", "")  # -> self_test
            result = self._selftest(self.store.slots / slot, manifest, variant)
            baseline = self.health()  # the previous version's figures, up to now
            self.store.switch(slot, cmd.rollout_id)
        except (OtaError, OSError) as exc:
            if slot is not None:
                self.store.discard(slot)
            self._enter("error", _reason(exc))  # -> failed
            log.warning("ota failed rollout=%s version=%s error=%s", cmd.rollout_id, cmd.version, exc)
            return self.state
        self._enter("ok", f"self-test {result.to_dict()}")  # -> switched
        try:
            self.on_switch(self.store.active_dir)  # type: ignore[arg-type]
        except Exception as exc:  # the agent could not serve it: go back
            return self._roll_back(f"the agent could not load {cmd.version}: {exc}", {})
        return self._watch(cmd, baseline)

    def rollback(self, cmd: OtaCommand) -> State:
        """The hub asks to leave `cmd.version`; a device not running it has nothing to do."""
        if self.store.active_version != cmd.version or self.store.previous_dir is None:
            self.publish("rolled_back", "ok", f"not running {cmd.version} with a previous version; nothing to do", {})
            return "rolled_back"
        self.state = "watching"
        return self._roll_back(f"the hub rolled back rollout {cmd.rollout_id}", {})

    # -- steps -----------------------------------------------------------------------

    def _selftest(self, slot_dir: Path, manifest: Manifest, variant: Variant) -> SelfTestResult:
        """The self-test, run again when the harness itself failed: an internal error is no verdict on the variant."""
        for attempt in range(1, SELFTEST_ATTEMPTS + 1):
            try:
                return run_selftest(slot_dir, manifest, variant)
            except SelfTestHarnessError as exc:
                if attempt == SELFTEST_ATTEMPTS or self.cancel.wait(SELFTEST_RETRY_S * attempt):
                    raise SelfTestHarnessError(f"{exc} (after {attempt} attempts)") from exc
                log.warning("ota self-test harness error, retrying attempt=%d error=%s", attempt, exc)
        raise AssertionError("unreachable")

    def _watch(self, cmd: OtaCommand, baseline: HealthFigures) -> State:
        policy = self.config.watch
        if cmd.watch_s is not None:
            policy = WatchPolicy(**{**policy.__dict__, "watch_s": cmd.watch_s})
        started = self.monotonic()
        self._enter("ok", f"watching for {policy.watch_s:g}s", {"baseline": baseline.to_dict()})  # -> watching
        current = HealthFigures()
        while True:
            if self.cancel.wait(min(self.config.poll_s, max(policy.watch_s, 0.001))):
                # Stopping mid-watch: the trial stays uncommitted; the next start rolls it back.
                return self.state
            current = current.merge(self.health())
            decision = decide_health(baseline, current, self.monotonic() - started, policy)
            figures = {"baseline": baseline.to_dict(), "current": current.to_dict()}
            if decision.verdict == "commit":
                self.store.commit(figures)
                self._enter("ok", decision.reason, figures)
                return self.state
            if decision.verdict == "rollback":
                return self._roll_back(decision.reason, figures)

    def _roll_back(self, reason: str, figures: dict[str, Any]) -> State:
        self.store.rollback()
        try:
            self.on_switch(self.store.active_dir)  # type: ignore[arg-type]
        except Exception as exc:  # the old model should always load; say so loudly if not
            log.error("ota rollback: the agent could not load the previous version error=%s", exc)
            reason += f"; reloading the previous version failed: {exc}"
        self.state = advance(self.state, "error") if self.state in ("switched", "watching") else "rolled_back"
        self.publish(self.state, "ok", reason, figures)
        return self.state

    def _enter(self, outcome: str, reason: str, health: dict[str, Any] | None = None) -> None:
        self.state = advance(self.state, outcome)
        self.publish(self.state, "error" if self.state == "failed" else "ok", reason, health or {})


_REASON_KINDS: dict[type[BaseException], str] = {
    VerificationError: "verification",
    SelfTestError: "self-test",
    SelfTestHarnessError: "self-test error",  # the test could not run; the variant was neither passed nor failed
}


def _reason(exc: BaseException) -> str:
    kind = _REASON_KINDS.get(type(exc), type(exc).__name__)
    return f"{kind}: {exc}"[:2000]
