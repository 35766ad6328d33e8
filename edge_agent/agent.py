"""The edge agent: wires config, model, micro-batcher, policy, fallback, hard examples, health,
and (when configured) telemetry and OTA updates.

`Agent(config).start()` serves on background threads and returns, so tests and the
simulator run agents in-process; `tandem-agent run` starts one and waits for a signal.
With OTA on, the model comes from the A/B store's active slot and an update hot-swaps
it (`_on_switch`) without dropping requests in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tandem.edge_agent.config import AgentConfig
from tandem.edge_agent.datadir_lock import AgentDataDirLock
from tandem.edge_agent.errors import ConfigError
from tandem.edge_agent.footprint import Footprint
from tandem.edge_agent.hard_examples import HardExampleQueue
from tandem.edge_agent.health import HealthServer
from tandem.edge_agent.metrics import AgentMetrics
from tandem.edge_agent.tracing import AgentTracer
from tandem.edge_agent.errors import ModelLoadError
from tandem.edge_agent.model import LoadedModel, load_model
from tandem.edge_agent.trust import TrustPolicy, check_model_dir
from tandem.edge_agent.observe import RequestObserver
from tandem.edge_agent.policy import ConfidencePolicy, PolicyError, resolve_threshold, task_policy_for
from tandem.edge_agent.server import Concurrency, ZmqServer
from tandem.edge_agent.service import FALLBACK_GRACE_S, InferenceService
from tandem.edge_agent.serving import Serving
from tandem.hardware_profiles import ProfileError, get_profile
from tandem.hardware_profiles.runtimes.batching import MicroBatcher
from tandem.protocols.otlp import TracingError, exporter_for

if TYPE_CHECKING:
    from tandem.edge_agent.fallback import Fallback

log = logging.getLogger(__name__)

BREAKER_STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}
FALLBACK_THREADS = 8
EXECUTOR_DRAIN_MARGIN_S = 0.5  # at stop, past the fallback deadline, for a hub call's result to be counted
SWAP_FLIP_TIMEOUT_S = 5.0
DRAIN_GRACE_S = 5.0  # beyond the fallback deadline, for requests of the old model still in flight


class Agent:
    """One model served on one endpoint. Use as a context manager or call start()/stop()."""

    def __init__(self, config: AgentConfig, *, fallback: Fallback | None = None) -> None:
        """`fallback` replaces the client built from `config.fallback.hub_url` (anything with FallbackClient's `infer`)."""
        self.config = config.validate()
        self.metrics = AgentMetrics()
        self.breaker: Any = None
        self.fallback = fallback
        self.hard_examples: HardExampleQueue | None = None
        self.server: ZmqServer | None = None
        self.health: HealthServer | None = None
        self.observer = RequestObserver()
        self.concurrency = Concurrency()  # the server's view, read by every service swapped in
        self.telemetry: Any = None  # TelemetryService when mqtt_url is set
        self.ota: Any = None  # OtaClient when ota_enabled
        self.serving: Serving | None = None  # model, policy, batcher, service: one reference, swapped at once
        self.budget = config.mode.fallback_budget(time.monotonic())  # [mode]: shared by every model swapped in
        self.swaps = 0
        self._ota_started = False
        self._swap_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._started = threading.Event()
        self.tracer: AgentTracer | None = None  # [tracing] otlp_endpoint set: spans go to the collector
        self._data_lock: AgentDataDirLock | None = None

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> "Agent":
        """Load the model and serve; raises ModelLoadError / ConfigError with what to fix."""
        cfg = self.config
        footprint = Footprint(cfg.hard_examples.data_dir, cfg.ota.store_dir)  # a failed start leaves no files
        try:
            self._data_lock = AgentDataDirLock(cfg.hard_examples.data_dir).acquire()  # one agent per data dir
            model_dir = cfg.model.dir
            if cfg.ota.enabled:
                from tandem.edge_agent.uplink import make_ota_client

                self.ota = make_ota_client(
                    cfg,
                    self._on_switch,
                    self.observer.take_health,
                    status_sink=self._ota_status_sink if cfg.telemetry_on else None,
                )
                model_dir = self.ota.active_dir
            if self.fallback is None and cfg.fallback.hub_url:
                self.fallback = self._make_fallback(cfg.fallback.hub_url)
            if self.fallback is not None:
                self._executor = ThreadPoolExecutor(FALLBACK_THREADS, thread_name_prefix="agent-fallback")
            self.tracer = self._make_tracer()
            self.hard_examples = HardExampleQueue(
                cfg.hard_examples.data_dir / "hard_examples.sqlite", cfg.hard_examples.max
            )
            serving = self._build_serving(model_dir)
            self._set_serving(serving)
            if cfg.telemetry_on:
                from tandem.edge_agent.uplink import make_telemetry

                self.telemetry = make_telemetry(
                    cfg, serving.model, hard_examples=self.hard_examples, metrics=self.metrics
                )
                self.observer.telemetry = self.telemetry
            self.server = ZmqServer(
                cfg.server.endpoint,
                self._handle,
                max_inflight=cfg.batch.max_queue * 4,
                spin_us=cfg.server.spin_us,
                concurrency=self.concurrency,
            ).start()
            self._register_gauges()
            if cfg.health.http_port is not None:
                try:
                    self.health = HealthServer(
                        self.healthz, self.metrics.render, cfg.health.http_host, cfg.health.http_port
                    ).start()
                except OSError as exc:
                    raise ConfigError(
                        f"health.http_port: cannot listen on {cfg.health.http_host}:{cfg.health.http_port} "
                        f"({exc.strerror or exc}); give each agent on this host its own: --http-port PORT, 0 for "
                        "any (or [health] http_port, env TANDEM_AGENT_HEALTH_HTTP_PORT)"
                    ) from exc
            if self.ota is not None:
                self.ota.start()
                self._ota_started = True
        except BaseException:
            self.stop()
            footprint.undo()
            raise
        self._started.set()
        log.info(
            "agent serving model=%s version=%s variant=%s endpoint=%s batching=%s hub=%s telemetry=%s ota=%s",
            serving.model.name,
            serving.model.version,
            serving.model.variant.id,
            self.endpoint,
            serving.batcher.batching,
            cfg.fallback.hub_url or "-",
            cfg.telemetry.mqtt_url if self.telemetry else "-",
            self.ota.store.root if self.ota else "-",
        )
        return self

    def stop(self) -> None:
        """Stop serving and release everything; safe to call twice or after a failed start."""
        self._started.clear()
        for step in (
            self._stop_ota,
            self._stop_health,
            self._stop_server,
            self._stop_executor,  # before telemetry: a shadow or cloud call still running lands in the last window
            self._stop_telemetry,
            self._stop_serving,
            self._stop_hard_examples,
            self._close_fallback,
            self._close_tracer,
            self._release_data_lock,
        ):
            try:
                step()
            except Exception:
                log.exception("agent stop step failed step=%s", step.__name__)

    def _release_data_lock(self) -> None:
        if self._data_lock is not None:
            self._data_lock.release()
            self._data_lock = None

    def __enter__(self) -> "Agent":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what others read ------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return self.server.endpoint if self.server else self.config.server.endpoint

    @property
    def health_url(self) -> str | None:
        return self.health.url if self.health else None

    def healthz(self) -> tuple[bool, dict]:
        serving = self._started.is_set() and self.model is not None
        body: dict[str, Any] = {"status": "ok" if serving else "starting", "device_id": self.config.server.device_id}
        if self.model is not None:
            body.update(
                model=self.model.name,
                version=self.model.version,
                variant=self.model.variant.id,
                runtime=self.model.variant.runtime,
                selection=self.model.selection,
            )
        body["breaker"] = self.breaker.state if self.breaker is not None else None
        body["hub"] = self.config.fallback.hub_url
        hub_error = getattr(self.fallback, "config_error", None)
        if hub_error:
            body["hub_error"] = hub_error
        from tandem.edge_agent.uplink import ota_status, telemetry_status

        body["telemetry"] = telemetry_status(self.telemetry) if self.telemetry is not None else None
        body["ota"] = ota_status(self.ota) if self.ota is not None else None
        body["swaps"] = self.swaps
        body["mode"] = self._mode_status()
        reasons = [
            r
            for r in (
                getattr(self.telemetry, "degraded", None),
                getattr(self.hard_examples, "degraded", None),
                hub_error,
            )
            if r
        ]
        if serving and reasons:  # still serving (200), but a supervisor sees what is failing
            body["status"], body["degraded"] = "degraded", reasons
        return serving, body

    def _mode_status(self) -> dict[str, Any]:
        """The serving mode and what is left of the fallback budget (None: that limit is off)."""
        cfg, budget = self.config, self.budget
        return {
            "mode": cfg.mode.default,
            "shadow_sample_rate": cfg.mode.shadow_sample_rate,
            "budget": {
                "rps": budget.rps,
                "burst": budget.burst if budget.rps is not None else None,
                "bytes_per_hour": budget.bytes_per_hour,
                "tokens": round(budget.tokens(time.monotonic()), 3) if budget.rps is not None else None,
                "bytes_left": int(budget.bytes_left()) if budget.bytes_per_hour is not None else None,
                "spent": dict(budget.spent),
            },
        }

    # -- serving and hot swaps -----------------------------------------------------------

    # What is served now, each read from the one `serving` reference: a swap (OTA) replaces that
    # reference in one assignment, so no thread sees the new model with the old policy or batcher.
    @property
    def model(self) -> LoadedModel | None:
        serving = self.serving
        return serving.model if serving is not None else None

    @property
    def policy(self) -> ConfidencePolicy | None:
        serving = self.serving
        return serving.policy if serving is not None else None

    @property
    def batcher(self) -> MicroBatcher | None:
        serving = self.serving
        return serving.batcher if serving is not None else None

    @property
    def service(self) -> InferenceService | None:
        serving = self.serving
        return serving.service if serving is not None else None

    def _handle(self, frames: Sequence[Any]) -> Any:
        serving = self.serving  # read per request: a swap flips it
        assert serving is not None, "requests are served only once a model is"
        return serving.service.handle(frames)

    def _build_serving(self, model_dir: Path) -> Serving:
        """Load, and wrap in policy, batcher and service, the model in `model_dir` (not yet served)."""
        cfg = self.config
        verdict = check_model_dir(model_dir, self._trust_policy())  # refuses an untrusted folder before anything runs
        model = load_model(model_dir, cfg.model.profile, self._variant_for(model_dir), threads=cfg.model.threads)
        model.selection["trust"] = verdict.as_dict()
        try:
            policy = self._make_policy(model)
            max_batch, batching = self._batch_limits()
            batcher = MicroBatcher(
                model.session,
                max_batch=max_batch,
                window_ms=cfg.batch.window_us / 1000.0,
                max_queue=cfg.batch.max_queue,
                batching=batching,
                name="agent-batcher",
            )
        except BaseException:
            model.close()
            raise
        service = InferenceService(
            model,
            batcher,
            policy,
            self.metrics,
            device_id=cfg.server.device_id,
            allow_nan=cfg.model.allow_nan,
            fallback=self.fallback,
            fallback_executor=self._executor,
            deadline_ms=cfg.fallback.deadline_ms,
            hub_model=cfg.fallback.hub_model,
            hard_examples=self.hard_examples,
            inline_max_us=cfg.batch.inline_max_us,
            observer=self.observer,
            mode=cfg.mode.default,
            budget=self.budget,
            shadow_sample_rate=cfg.mode.shadow_sample_rate,
            fast_lane=cfg.server.fast_lane,
            solo_inline_max_us=cfg.batch.solo_inline_max_us,
            concurrency=self.concurrency,
            streams_max=cfg.streams.max,
            stream_idle_s=cfg.streams.idle_s,
            tracer=self.tracer,
        )
        return Serving(model, policy, batcher, service)

    def _trust_policy(self) -> TrustPolicy:
        t = self.config.trust
        return TrustPolicy.from_files(
            self.config.trusted_key_files,
            t.publisher_keys,
            require_publisher=t.require_publisher,
            allow_unsigned=t.allow_unsigned,
        )

    def _variant_for(self, model_dir: Path) -> str | None:
        """The configured variant id, unless an OTA release no longer has it (then the profile's choice)."""
        if self.config.model.variant is None or self.ota is None:
            return self.config.model.variant
        from tandem.protocols.manifest import ManifestError, load_manifest

        try:
            ids = {v.id for v in load_manifest(model_dir).variants}
        except ManifestError:
            return self.config.model.variant  # load_model reports it
        if self.config.model.variant in ids:
            return self.config.model.variant
        log.warning(
            "configured variant=%s is not in %s; serving the profile's choice", self.config.model.variant, model_dir
        )
        return None

    def _set_serving(self, serving: Serving) -> None:
        self.serving = serving

    def _on_switch(self, model_dir: Path) -> None:
        """OTA hook (its worker thread): serve `model_dir` in place of the current model, losing no request.

        Build and warm the new model beside the old; flip the references on the I/O loop's
        thread, between two requests; drain what the old one still has in flight; close it.
        """
        with self._swap_lock:
            new = self._build_serving(model_dir)
            try:
                new.warm_up()
            except Exception as exc:
                new.close()
                raise ModelLoadError(f"{model_dir}: the warm-up run failed ({exc})") from exc
            old = self.serving
            self._flip(new)
            self.swaps += 1
            log.info(
                "model swapped from=%s to=%s variant=%s", old.version if old else "-", new.version, new.model.variant.id
            )
            if old is not None:
                if not old.drain(self.config.fallback.deadline_ms / 1000.0 + DRAIN_GRACE_S):
                    log.warning(
                        "model swap: %d requests of version %s still in flight; closing it anyway",
                        old.service.pending,
                        old.version,
                    )
                old.close()

    def _flip(self, new: Serving) -> None:
        """Serve `new` from the next request on: on the loop thread, where every reply is made, so the
        health figures restart and the old version's telemetry window closes exactly at the flip."""
        done = threading.Event()

        def flip() -> None:
            if done.is_set():
                return
            self._set_serving(new)
            # The watch judges the new version from here: what the old one served since the
            # updater's baseline probe (download, warm-up) is not the new one's.
            self.observer.take_health()
            done.set()
            if self.telemetry is not None:
                try:
                    self.telemetry.switch_model(new.model.manifest, new.model.variant.id, new.model.selection)
                except Exception:  # the swap stands; windows keep the old version until the next one
                    log.exception("telemetry could not switch to version=%s", new.version)

        try:
            loop = self.server.loop if self.server is not None else None
        except AssertionError:  # not started yet
            loop = None
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(flip)
            if done.wait(SWAP_FLIP_TIMEOUT_S):
                return
            log.warning(
                "model swap: the I/O loop did not run the flip within %.0f s; flipping here", SWAP_FLIP_TIMEOUT_S
            )
        flip()

    # -- uplink (telemetry, OTA) ---------------------------------------------------------

    def _ota_status_sink(self, payload: bytes) -> None:
        """OTA status into the telemetry outbox's class 0: on disk first, sent before any window."""
        from tandem.protocols import topics

        telemetry = self.telemetry
        if telemetry is None:  # telemetry not started (yet) or stopped: the OtaClient publishes it itself
            raise RuntimeError("telemetry is not running")
        telemetry.enqueue(topics.OTA_STATUS, payload)

    # -- construction helpers ----------------------------------------------------------

    def _make_policy(self, model: LoadedModel) -> ConfidencePolicy:
        cfg = self.config
        task = model.manifest.task
        # a dense task's "threshold" binarizes its maps for the compiler's agreement; it is no confidence threshold
        task_threshold = task.get("threshold") if task.get("kind") != "dense" else None
        choice = resolve_threshold(
            cfg.policy.kind, cfg.policy.threshold, model.variant.calibration, task_threshold, cfg.policy.output
        )
        log.info("policy threshold=%s temperature=%s source=%s", choice.threshold, choice.temperature, choice.source)
        try:
            by_task = task_policy_for(
                task, cfg.policy.threshold, cfg.policy.output, cfg.policy.transform, model.variant.calibration
            )
            if by_task is not None:  # not a softmax classifier: the task's own confidence (tandem.tasks)
                return by_task
            return ConfidencePolicy(
                cfg.policy.kind,
                choice.threshold,
                # the task's output when the config names none: scikit-learn's probabilities come second
                output=cfg.policy.output if cfg.policy.output is not None else task.get("output"),
                transform=cfg.policy.transform,
                temperature=choice.temperature,
            )
        except PolicyError as exc:
            raise ConfigError(f"policy: {exc}") from exc

    def _batch_limits(self) -> tuple[int, bool]:
        """The config's max_batch, capped by the hardware profile's constraints when the profile is known."""
        try:
            profile = get_profile(self.config.model.profile)
        except ProfileError:
            return self.config.batch.max_batch, True  # a profile only the manifest knows: no extra limits
        cons = profile.constraints
        max_batch = min(self.config.batch.max_batch, cons.max_batch) if cons.max_batch else self.config.batch.max_batch
        return max_batch, not cons.static_shapes

    def _make_fallback(self, hub_url: str) -> Fallback:
        try:
            from tandem.edge_agent.breaker import CircuitBreaker
            from tandem.edge_agent.fallback import FallbackClient
        except ImportError as exc:
            raise ConfigError(f"fallback.hub_url is set but the fallback client cannot load ({exc})") from exc
        self.breaker = CircuitBreaker(self.config.fallback.breaker_failures, self.config.fallback.breaker_cooldown_s)
        return FallbackClient(
            hub_url,
            deadline_ms=self.config.fallback.deadline_ms,
            breaker=self.breaker,
            tls=self.config.fallback_tls,
        )  # the device's mqtt_tls_* identity, on gRPC too

    def _register_gauges(self) -> None:
        m = self.metrics
        m.gauge(
            "tandem_agent_batch_queue_depth",
            "Requests waiting for the runtime.",
            lambda: self.batcher.queue_depth if self.batcher else 0,
            per_model=True,
        )
        m.gauge(
            "tandem_agent_inflight_requests",
            "Requests received and not yet answered.",
            lambda: self.server.inflight if self.server else 0,
        )
        m.gauge(
            "tandem_agent_hard_examples_queued",
            "Low-confidence inputs kept on disk for upload.",
            lambda: self.hard_examples.depth() if self.hard_examples else 0,
        )
        m.gauge(
            "tandem_agent_hard_examples_dropped",
            "Hard examples evicted or not stored (queue full).",
            lambda: self.hard_examples.dropped() if self.hard_examples else 0,
        )
        m.gauge(
            "tandem_agent_batches_total",
            "Runtime calls made by the micro-batcher.",
            lambda: self.batcher.stats().batches if self.batcher else 0,
            per_model=True,
        )
        m.gauge(
            "tandem_agent_inline_runs_total",
            "Runtime calls made on the I/O loop instead of the batcher's worker.",
            lambda: self.batcher.stats().inline if self.batcher else 0,
            per_model=True,
        )
        m.gauge(
            "tandem_agent_model_swaps",
            "Models swapped in by OTA since start (switches and rollbacks).",
            lambda: self.swaps,
        )
        if self.telemetry is not None:
            m.gauge(
                "tandem_agent_telemetry_outbox_depth",
                "Telemetry windows on disk, not yet acked by the broker.",
                lambda: len(self.telemetry.outbox) if self.telemetry else 0,
            )
            m.gauge(
                "tandem_agent_telemetry_outbox_dropped",
                "Telemetry windows dropped because the outbox was full.",
                lambda: self.telemetry.outbox.dropped_total if self.telemetry else 0,
            )
        if self.budget.rps is not None:
            m.gauge(
                "tandem_agent_budget_request_tokens",
                "Fallback budget: hub calls it would admit now.",
                lambda: self.budget.tokens(time.monotonic()),
            )
        if self.budget.bytes_per_hour is not None:
            m.gauge(
                "tandem_agent_budget_bytes_left",
                "Fallback budget: request bytes left for the hub this hour.",
                self.budget.bytes_left,
            )
        if self.breaker is not None:
            m.gauge(
                "tandem_agent_breaker_state",
                "Hub circuit breaker: 0 closed, 1 half-open, 2 open.",
                lambda: BREAKER_STATE_VALUES.get(self.breaker.state, -1),
            )

    # -- stop steps ----------------------------------------------------------------------

    def _stop_health(self) -> None:
        if self.health:
            self.health.stop()
            self.health = None

    def _stop_server(self) -> None:
        if self.server:
            self.server.stop()
            self.server = None

    def _stop_ota(self) -> None:
        ota, self.ota = self.ota, None
        if ota is not None and self._ota_started:
            self._ota_started = False
            ota.stop()

    def _stop_telemetry(self) -> None:
        if self.telemetry is not None:
            self.observer.telemetry = None
            self.telemetry.stop()
            self.telemetry = None

    def _stop_serving(self) -> None:
        serving, self.serving = self.serving, None
        if serving is not None:
            serving.close()

    def _stop_executor(self) -> None:
        """Drop queued hub calls, and wait (bounded by the fallback deadline) for those already running.

        A running shadow call counts in the agent's metrics and in its telemetry window when it ends;
        stopping telemetry first left such a result in the metrics and in no window.
        """
        executor, self._executor = self._executor, None
        if executor is None:
            return
        executor.shutdown(wait=False, cancel_futures=True)
        drain = threading.Thread(
            target=executor.shutdown, kwargs={"wait": True}, name="agent-fallback-drain", daemon=True
        )
        drain.start()
        drain.join(self.config.fallback.deadline_ms / 1000 + FALLBACK_GRACE_S + EXECUTOR_DRAIN_MARGIN_S)
        if drain.is_alive():
            log.warning("agent stop: a hub call outlived its deadline; its result will not reach telemetry")

    def _stop_hard_examples(self) -> None:
        if self.hard_examples:
            self.hard_examples.close()
            self.hard_examples = None

    def _make_tracer(self) -> AgentTracer | None:
        try:
            exporter = exporter_for(self.config.tracing, "tandem-agent")
        except TracingError as exc:
            raise ConfigError(str(exc)) from exc
        return AgentTracer(exporter, self.config.server.device_id) if exporter is not None else None

    def _close_tracer(self) -> None:
        tracer, self.tracer = self.tracer, None
        if tracer is not None:
            tracer.sink.close()  # sends the spans still queued

    def _close_fallback(self) -> None:
        close = getattr(self.fallback, "close", None)
        if callable(close):
            close()
