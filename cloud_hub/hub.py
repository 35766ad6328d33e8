"""The Hub: one process holding storage, registries, auth, the fleet's MQTT broker,
the REST console (uvicorn in a thread), the gRPC inference server, telemetry ingestion
with the drift engine, and OTA rollouts.

It prints nothing; `tandem-hub serve` prints `urls()`. Construct it to use the
registries in-process (the CLI and tests do); `start()` opens the network side.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Protocol

from tandem.cloud_hub.auth import TokenStore
from tandem.cloud_hub.broker import BrokerHandle, start_broker
from tandem.cloud_hub.endpoints import stable_mqtt_port
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.devices import DeviceRegistry
from tandem.cloud_hub.errors import ConfigError, HubError
from tandem.cloud_hub.keys import ReleaseKey
from tandem.cloud_hub.private_files import private_tree
from tandem.cloud_hub.publishers import TrustedPublishers
from tandem.cloud_hub.registry import ModelRegistry
from tandem.cloud_hub.broker_identity import IdentityRefusals
from tandem.cloud_hub.cluster.replica import replica_id_of
from tandem.cloud_hub.revocation import RevocationWatch
from tandem.cloud_hub.storage import ArtifactStore, open_database
from tandem.cloud_hub.storage.datadir import lock_data_dir
from tandem.cloud_hub.storage.doctor import refuse_if_corrupt

log = logging.getLogger(__name__)

HTTP_START_TIMEOUT_S = 15.0


class HubService(Protocol):
    """Something that lives as long as the hub's network side (e.g. telemetry ingestion).

    `start` runs after the broker is up (so `hub.mqtt_url` is known) and before HTTP;
    `stop` runs in reverse order of start.
    """

    def start(self, hub: "Hub") -> None: ...

    def stop(self) -> None: ...


class Hub:
    """The fleet's home on one machine; every component is reachable as an attribute."""

    def __init__(self, config: HubConfig | None = None) -> None:
        self.config = config or HubConfig()
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        # this replica's id in a [cluster] of hubs on one database and data dir; None: a hub alone on its dir
        self.replica_id: str | None = replica_id_of(self.config.cluster) if self.config.cluster.enabled else None
        # before any file is opened: alone on the dir (or beside other replicas), leftovers of killed uploads swept
        self._lock = lock_data_dir(self.config.data_dir, self.replica_id)
        try:
            refuse_if_corrupt(self.config.data_dir)  # one line naming file and table, not a 500 on every request
            self.db = open_database(self.config.database)  # SQLite <data_dir>/hub.db or storage.database_url
        except BaseException:
            self._lock.release()
            raise
        private_tree(self.config.data_dir)  # 0700/0600 whatever the umask (tokens, keys, device inputs)
        try:
            self.artifacts = ArtifactStore(self.config.artifacts_dir)
            self.key = ReleaseKey.load_or_create(self.config.release_key_path)
            self.publishers = TrustedPublishers(self.config.publishers_dir)
            if self.config.publishers.trust_on_first_use:
                log.warning(
                    "publishers.trust_on_first_use is ON: unknown publisher keys are trusted on first upload "
                    "(development only)"
                )
            self.registry = ModelRegistry(
                self.db,
                self.artifacts,
                self.key,
                self.publishers,
                trust_on_first_use=self.config.publishers.trust_on_first_use,
            )
            self.devices = DeviceRegistry(self.db, self.config.devices.offline_after_s, _known_profiles(self.config))
            self.tokens = TokenStore(self.db)
        except BaseException:
            self.db.close()
            self._lock.release()
            raise
        self._app: Any = None
        self._broker: BrokerHandle | None = None
        self._pki: Any = None  # cloud_hub.pki.Pki when config.tls_dir is set
        self._inference: Any = None
        self._grpc_port: int | None = None
        self._http_server: Any = None
        self._http_thread: threading.Thread | None = None
        self._http_port: int | None = None
        self._http_sock: socket.socket | None = None
        self._services: list[HubService] = []
        self._broker_lock = threading.Lock()  # restart_broker (revocations) and respawn_broker (BrokerWatch)
        self.broker_watch: Any = None  # BrokerWatch while the hub runs its own Mosquitto
        self._started_services: list[HubService] = []
        self._late_services: list[HubService] = []  # started after HTTP (rollouts need its URL), stopped before it
        self.telemetry: Any = None  # TelemetryIngestService while telemetry runs (set by HubTelemetry)
        self.rollouts: Any = None  # RolloutService while rollouts run (set by attach_rollouts)
        self.presence: Any = None  # DevicePresence while it runs (devices from their MQTT status)
        self.hard_examples: Any = None  # HardExampleIngest while it runs (what agents upload)
        self.cluster: Any = None  # cluster.HubCluster on a replica ([cluster] enabled): the lease and its singletons
        self._closed = False

    def add_service(self, service: HubService) -> None:
        """Register a service to start with the hub (call before `start`)."""
        self._services.append(service)

    @property
    def app(self) -> Any:
        """The FastAPI app (built on first use; other issues may add routers to it before start)."""
        if self._app is None:
            from tandem.cloud_hub.rest import create_app

            self._app = create_app(self)
        return self._app

    @property
    def broker_kind(self) -> str | None:
        if self._broker is not None:
            return self._broker.kind
        return "external" if self.config.mqtt.url else None

    @property
    def mqtt_tls(self) -> Any:
        """The hub's own MQTT identity (protocols.tls.TlsFiles) with tls_dir; None: plain text."""
        return self._pki.hub_client_files() if self._pki is not None else None

    @property
    def mqtt_url(self) -> str | None:
        return self._broker.url if self._broker is not None else self.config.mqtt.url

    @property
    def http_port(self) -> int | None:
        return self._http_port

    @property
    def http_scheme(self) -> str:
        """https with tls_dir (the hub's server certificate), http otherwise."""
        return "https" if self.config.tls_dir is not None else "http"

    @property
    def http_url(self) -> str | None:
        return f"{self.http_scheme}://{_url_host(self.config.http.host)}:{self._http_port}" if self._http_port else None

    @property
    def grpc_port(self) -> int | None:
        return self._grpc_port

    def urls(self) -> dict[str, str]:
        """What this hub serves: http (REST + /docs), telemetry/drift/rollouts/hard_examples (their REST routes,
        when running), public (the URL devices download from, when set), grpc (v2 inference), mqtt (the broker)."""
        out: dict[str, str] = {}
        if self.http_url:
            out["http"] = self.http_url
            out["docs"] = self.http_url + "/docs"
            if self.telemetry is not None:
                out["telemetry"] = self.http_url + "/v1/telemetry/windows"
                out["drift"] = self.http_url + "/v1/drift/status"
            if self.rollouts is not None:
                out["rollouts"] = self.http_url + "/v1/rollouts"
            if self.hard_examples is not None:
                out["hard_examples"] = self.http_url + "/v1/hard-examples"
        if self.config.http.public_url:
            out["public"] = self.config.http.public_url
        if self._grpc_port:
            out["grpc"] = f"{_url_host(self.config.grpc.host)}:{self._grpc_port}"
        if self.mqtt_url:
            out["mqtt"] = self.mqtt_url
        return out

    def start(self, http: bool = True) -> "Hub":
        """Start the broker (unless mqtt.url is set), gRPC inference (if model dirs), telemetry and the added
        services, HTTP, then rollouts (they need the URL devices download from).

        Telemetry and rollouts only connect in the background, so a hub whose broker is unreachable still starts
        (they reconnect when it comes); HubConfig.telemetry.enabled / .rollouts.enabled turn them off.
        """
        if self._closed:
            raise HubError("this Hub was stopped; create a new Hub on the same data dir to restart")
        try:
            self._load_pki()
            if self.config.mqtt.url is None and self._broker is None:
                port = stable_mqtt_port(self.config.data_dir, self.config.mqtt.host, self.config.mqtt.port)
                self._broker = start_broker(
                    self.config.mqtt.broker,
                    self.config.data_dir / "mosquitto",
                    self.config.mqtt.host,
                    port,
                    tls_pki=self._pki,
                )
            if self.config.models.dirs and self._inference is None:
                self._start_inference()
            self._add_revocation_watch()
            self._add_broker_watch()
            self._add_default_telemetry()
            self._add_default_presence()
            self._add_default_hard_examples()
            for service in self._services:
                if service not in self._started_services:
                    service.start(self)
                    self._started_services.append(service)
            if self.telemetry is not None and self.presence is not None:
                self.telemetry.on_seen = self.presence.note_seen  # every stored window is a heartbeat
            if http and self._http_server is None:
                self._start_http()
            self._start_rollouts()
        except BaseException:
            self.stop()
            raise
        private_tree(self.config.data_dir)  # what the services created (databases, broker files)
        log.info("hub started %s", " ".join(f"{k}={v}" for k, v in self.urls().items()))
        return self

    def _load_pki(self) -> None:
        """Open tls_dir (mutual TLS on MQTT and gRPC), or say once, loudly, that this hub talks plain text."""
        if self.config.tls_dir is None:
            from tandem.protocols.tls import warn_plain_text

            warn_plain_text("tandem hub", "its devices (MQTT, gRPC; set tls_dir, env TANDEM_HUB_TLS_DIR)")
            return
        if self._pki is None:
            from tandem.cloud_hub.pki import Pki, PkiError

            try:
                self._pki = Pki(self.config.tls_dir)
                self._pki.hub_server_files().check()
                self._pki.hub_client_files().check()
            except (PkiError, ValueError) as exc:
                self._pki = None
                raise ConfigError(f"tls_dir (env TANDEM_HUB_TLS_DIR): {exc}") from exc

    def _add_default_telemetry(self) -> None:
        from tandem.cloud_hub.telemetry.hub_service import HubTelemetry

        if not self.config.telemetry.enabled or any(isinstance(s, HubTelemetry) for s in self._services):
            return
        if self._mqtt5_missing("telemetry"):
            return
        self._services.insert(0, HubTelemetry())  # first: other services may read hub.telemetry

    def _add_default_presence(self) -> None:
        """Devices register themselves from their retained MQTT status (MQTT 3.1.1 is enough: any broker)."""
        from tandem.cloud_hub.presence import DevicePresence

        if not self.mqtt_url or any(isinstance(s, DevicePresence) for s in self._services):
            return
        # connects with hub.mqtt_tls; a replica watches statuses only while it holds the lease (cloud_hub/cluster)
        self._services.append(DevicePresence(watch_status=self.replica_id is None))

    def _add_default_hard_examples(self) -> None:
        """Store what agents upload on /hard_examples (with telemetry; MQTT 5 for manual acks)."""
        from tandem.cloud_hub.hard_examples import HardExampleIngest, HardExampleIngestConfig

        if (
            not self.config.telemetry.enabled
            or self.replica_id is not None  # a replica runs it while it holds the lease (cloud_hub/cluster)
            or not self.mqtt_url
            or any(isinstance(s, HardExampleIngest) for s in self._services)
        ):
            return
        if self._mqtt5_missing("hard-example ingestion"):
            return
        self._services.append(
            HardExampleIngest(
                HardExampleIngestConfig(self.mqtt_url, tls=self.mqtt_tls, max_rows=self.config.hard_examples.max)
            )
        )

    def _mqtt5_missing(self, what: str) -> bool:
        """The embedded broker (amqtt) speaks MQTT 3.1.1 only; telemetry's persistent sessions and OTA need 5."""
        if self._broker is not None and self._broker.kind == "embedded":
            log.warning(
                "%s not started: it needs MQTT 5 and the embedded broker speaks 3.1.1; install Mosquitto "
                '(broker = "mosquitto") or point mqtt.url (env TANDEM_HUB_MQTT_URL) at an MQTT 5 broker',
                what,
            )
            return True
        return False

    def _start_rollouts(self) -> None:
        if self.replica_id is not None and not self._late_services:
            from tandem.cloud_hub.cluster import start_cluster

            self._late_services.append(start_cluster(self))  # the lease; rollouts run on its holder
            return
        if not self.config.rollouts.enabled or self._late_services or self._mqtt5_missing("rollouts"):
            return
        if not (self.config.http.public_url or self.http_url):
            log.info("rollouts not started: no HTTP server and no public_url for devices to download from")
            return
        from tandem.cloud_hub.rollouts.attach import HubRollouts

        service = HubRollouts(
            tick_s=self.config.rollouts.tick_s, watch_s=self.config.rollouts.watch_s, tls=self.mqtt_tls
        )
        service.start(self)
        self._late_services.append(service)

    def _start_inference(self) -> None:
        from tandem.cloud_hub.inference import InferenceServer  # gRPC deps only when serving models

        server = InferenceServer(
            [str(p) for p in self.config.models.dirs],
            host=self.config.grpc.host,
            port=self.config.grpc.port,
            hub_profile=self.config.models.inference_profile,
            aliases=self.config.models.alias_map() or None,
            tls=self._pki.hub_server_files() if self._pki is not None else None,
            tracing=self.config.tracing,
            server=self.config.grpc.server,
            max_concurrent_rpcs=self.config.grpc.max_concurrent_rpcs,
            workers=self.config.grpc.workers,
            inline_max_us=self.config.grpc.inline_max_us,
            openvino_async=self.config.grpc.openvino_async,
            openvino_streams=self.config.grpc.openvino_streams,
        )
        self._grpc_port = server.start()
        self._inference = server

    def _start_http(self) -> None:
        import uvicorn

        sock = socket.socket(socket.AF_INET6 if ":" in self.config.http.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.config.http.host, self.config.http.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"http.port (env TANDEM_HUB_HTTP_PORT): cannot listen on {self.config.http.host}:{self.config.http.port} ({exc})"
            ) from exc
        try:
            server = uvicorn.Server(
                uvicorn.Config(
                    self.app,
                    log_level="warning",
                    access_log=False,
                    lifespan="off",
                    timeout_graceful_shutdown=5,
                    **self._http_tls_options(),
                )
            )
            server.config.load()  # builds the SSL context now, so a bad certificate is a ConfigError, not a dead thread
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            sock.close()
            raise ConfigError(f"tls_dir (env TANDEM_HUB_TLS_DIR): cannot serve HTTPS ({exc})") from exc
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tandem-hub-http", daemon=True)
        thread.start()
        deadline = time.monotonic() + HTTP_START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise HubError("the hub's HTTP server did not start; see the log for uvicorn's error")
            time.sleep(0.02)
        self._http_server, self._http_thread = server, thread
        self._http_port = sock.getsockname()[1]
        self._http_sock = sock

    def _http_tls_options(self) -> dict[str, Any]:
        """uvicorn's TLS settings: the hub's server certificate with tls_dir; client certificates per
        http.client_certs (none: bearer tokens only, so browsers work); nothing without tls_dir."""
        if self._pki is None:
            return {}
        import ssl

        files = self._pki.hub_server_files()
        options: dict[str, Any] = {"ssl_certfile": str(files.cert), "ssl_keyfile": str(files.key)}
        mode = self.config.http.client_certs
        if mode != "none":
            options["ssl_ca_certs"] = str(files.ca)
            options["ssl_cert_reqs"] = ssl.CERT_OPTIONAL if mode == "optional" else ssl.CERT_REQUIRED
        return options

    def stop(self) -> None:
        """Stop every server this hub started, in reverse order, and close the database; safe to call twice."""
        _stop_all(self._late_services)
        if self.rollouts is not None:  # attached by attach_rollouts on a hub not running its own
            from tandem.cloud_hub.rollouts.attach import HubRollouts

            _stop_all([HubRollouts.adopt(self)])
        if self._http_server is not None:
            self._http_server.should_exit = True
            if self._http_thread is not None:
                self._http_thread.join(10)
            if self._http_sock is not None:
                self._http_sock.close()
            self._http_server = self._http_thread = self._http_sock = None
            self._http_port = None
        _stop_all(self._started_services)
        if self._inference is not None:
            try:
                self._inference.stop()
            finally:
                self._inference = None
        if self._broker is not None:
            try:
                self._broker.stop()
            finally:
                self._broker = None
        if not self._closed:
            self.db.close()
            self._lock.release()
            self._closed = True
            log.info("hub stopped")  # once: a failed start stops, and its caller may stop again

    def _add_broker_watch(self) -> None:
        """Our own Mosquitto is restarted if it dies (cloud_hub/broker_watch.py)."""
        if self._broker is None or self._broker.kind != "mosquitto" or self.broker_watch is not None:
            return
        from tandem.cloud_hub.broker_watch import BrokerWatch

        self.broker_watch = BrokerWatch()
        self._services.append(self.broker_watch)

    def _add_revocation_watch(self) -> None:
        """With TLS: revocations end device tokens (and restart our own broker); our broker's refusals are counted."""
        if self._pki is None:
            return
        if not any(isinstance(s, RevocationWatch) for s in self._services):
            self._services.append(RevocationWatch(self._pki.crl_path, pki=self._pki))
        if self._broker is None or self._broker.kind != "mosquitto":
            return
        if not any(isinstance(s, IdentityRefusals) for s in self._services):
            self._services.append(IdentityRefusals(self.config.data_dir / "mosquitto" / "mosquitto.log"))

    def restart_broker(self) -> None:
        """Restart the hub's own Mosquitto on the same port: every open session is cut, the CRL is read again
        (revoked certificates are refused when they reconnect), persisted sessions and retained messages stay."""
        with self._broker_lock:
            old = self._broker
            if old is None or old.kind != "mosquitto":
                return
            old.stop()
            self._broker = self._start_own_broker(old)
        log.warning("broker restarted url=%s", self._broker.url)

    def own_broker_exit_code(self) -> int | None:
        """The exit status of the hub's own Mosquitto child if it has died, else None (running, or none of ours)."""
        with self._broker_lock:  # not while restart_broker swaps it
            return self._own_broker_exit_code()

    def _own_broker_exit_code(self) -> int | None:
        process = getattr(self._broker, "process", None)
        return process.poll() if process is not None else None

    def respawn_broker(self) -> str | None:
        """Start the hub's own Mosquitto again on its port after it died (BrokerWatch); its URL, or None when
        there was nothing to do (it runs, or the hub stopped). Raises BrokerError when it cannot start."""
        with self._broker_lock:
            old = self._broker
            if old is None or old.kind != "mosquitto" or self._own_broker_exit_code() is None:
                return None
            self._broker = self._start_own_broker(old)
            return self._broker.url

    def _start_own_broker(self, old: BrokerHandle) -> BrokerHandle:
        return start_broker("mosquitto", self.config.data_dir / "mosquitto", old.host, old.port, tls_pki=self._pki)

    def __enter__(self) -> "Hub":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_all(services: list[HubService]) -> None:
    while services:
        service = services.pop()
        try:
            service.stop()
        except Exception as exc:  # one failing service must not keep the others running
            log.error("service stop failed service=%r error=%r", service, exc)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def _known_profiles(config: HubConfig) -> set[str] | None:
    from tandem.hardware_profiles import ProfileError, load_profiles

    try:
        return set(load_profiles(config.models.profile_dirs))
    except ProfileError as exc:
        raise ConfigError(f"models.profile_dirs (env TANDEM_HUB_MODELS_PROFILE_DIRS): {exc}") from exc
