"""Hard examples at the hub: what agents upload on `/hard_examples`, kept for labelling and retraining.

MQTT 5, QoS 1, persistent session, manual acks: a message is acked to the broker only
after the batch holding it has committed to <data_dir>/hard_examples.sqlite (or the
`hard_examples` schema of storage.database_url), so a hub
crash loses nothing. Rows are keyed on (device, id), so a redelivery or an agent that
re-sends after a crash stores nothing twice; beyond `max_rows` the oldest go. Bad
messages are counted, logged (rate-limited) and acked. `decode_tensor_index`
(protocols/tensor_blob.py) checks the tensor blob: the hub never trusts a device's bytes.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tandem.cloud_hub.storage.outage import FailureLog
from tandem.cloud_hub.errors import HubError, NotFoundError
from tandem.cloud_hub.mqtt_batches import ack_batch, take_batch
from tandem.cloud_hub.storage.db import (
    DatabaseUnavailableError,
    HubDatabase,
    Migration,
    is_postgres_url,
    open_database,
)
from tandem.protocols import limits
from tandem.protocols.telemetry_codec import TelemetryDecodeError, decode_hard_example
from tandem.protocols.tensor_blob import TensorBlobError, TensorInfo, decode_index, decode_tensors
from tandem.protocols.mqtt_client import disconnect_and_stop, set_reconnect_delay
from tandem.protocols.tls import TlsFiles, configure_mqtt_client
from tandem.protocols.topics import HARD_EXAMPLES, TopicError, all_devices, parse_topic

log = logging.getLogger(__name__)
_failures = FailureLog(log)

HARD_EXAMPLES_DB_FILENAME = "hard_examples.sqlite"
HARD_EXAMPLES_SCHEMA = "hard_examples"  # on PostgreSQL
DEFAULT_MAX_ROWS = 100_000
_MAX_TEXT = 256

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "hard examples",
        (
            """CREATE TABLE hard_examples (
            n INTEGER PRIMARY KEY AUTOINCREMENT,
            device_id TEXT NOT NULL,
            example_id INTEGER NOT NULL,
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            label INTEGER,
            confidence REAL,
            source TEXT,
            request_id TEXT,
            created_at REAL,
            received_at REAL NOT NULL,
            tensors TEXT NOT NULL,
            blob BLOB NOT NULL,
            UNIQUE (device_id, example_id))""",
            "CREATE INDEX hard_examples_model ON hard_examples (model, version, n)",
        ),
    ),
)


class HardExampleError(TelemetryDecodeError):
    """A hard-example upload that cannot be stored; the message says what is wrong with it."""


@dataclass(frozen=True)
class HardExampleRecord:
    """One decoded, checked upload (header fields + the tensor index); `blob` is stored as received."""

    device_id: str
    example_id: int
    model: str
    version: str
    label: int | None
    confidence: float | None
    source: str | None
    request_id: str | None
    created_at: float | None
    tensors: tuple[TensorInfo, ...]
    blob: bytes


def decode_tensor_index(blob: bytes) -> tuple[tuple[TensorInfo, ...], int]:
    """protocols.tensor_blob's checked index of a device's blob, as this module's error type."""
    try:
        index, offset = decode_index(blob)
    except TensorBlobError as exc:
        raise HardExampleError(f"hard example {exc}") from exc
    if not index:
        raise HardExampleError("hard example tensors: none in the upload")
    return index, offset


def decode_upload(payload: bytes, topic_device: str | None) -> HardExampleRecord:
    """Decode one MQTT message; the header must name the topic's device (no uploads in another's name)."""
    header, blob = decode_hard_example(payload)
    if topic_device is not None and header["device_id"] != topic_device:
        raise HardExampleError(f"hard example: names device {header['device_id']!r} on {topic_device!r}'s topic")
    for key in ("model", "version"):
        if not isinstance(header.get(key), str) or not 0 < len(header[key]) <= _MAX_TEXT:
            raise HardExampleError(f"hard example: {key} must be a non-empty string")
    tensors, _ = decode_tensor_index(blob)

    def opt(key: str, kind: Any) -> Any:
        value = header.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            return None
        return value[:_MAX_TEXT] if isinstance(value, str) else value

    confidence = opt("confidence", (int, float))
    return HardExampleRecord(
        header["device_id"],
        header["id"],
        header["model"],
        header["version"],
        opt("label", int),
        None if confidence is None else float(confidence),
        opt("source", str),
        opt("request_id", str),
        opt("created_at", (int, float)),
        tensors,
        blob,
    )


def to_npz(blob: bytes) -> bytes:
    """The stored tensors as .npz bytes (np.load(..., allow_pickle=False) reads them)."""
    decode_tensor_index(blob)  # the hub's error type for a bad blob
    arrays = decode_tensors(blob, copy=False)
    buf = io.BytesIO()
    # written member by member, not np.savez(**arrays): a tensor named "file" or "allow_pickle" would
    # collide with savez's own parameters
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as npz:
        for name, array in arrays.items():
            with npz.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buf.getvalue()


_COLUMNS = (
    "device_id, example_id, model, version, label, confidence, source, request_id, created_at, received_at, tensors"
)


class HardExampleStore:
    """The hub's hard-example table (its own SQLite file with synchronous=FULL, or a PostgreSQL schema:
    acks follow commits)."""

    def __init__(self, db: HubDatabase, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        if max_rows < 1:
            raise HubError("hard_examples.max: must be a positive integer")
        self.db = db
        self.max_rows = max_rows

    @classmethod
    def open(cls, target: str | Path, max_rows: int = DEFAULT_MAX_ROWS) -> "HardExampleStore":
        """A postgresql:// URL (schema `hard_examples`), a SQLite file, or a directory (<dir>/hard_examples.sqlite)."""
        if is_postgres_url(target):
            return cls(open_database(target, MIGRATIONS, schema=HARD_EXAMPLES_SCHEMA, durable=True), max_rows)
        path = Path(target)
        if path.is_dir() or not path.suffix:
            path = path / HARD_EXAMPLES_DB_FILENAME
        return cls(open_database(path, MIGRATIONS, durable=True), max_rows)

    def close(self) -> None:
        self.db.close()

    def insert(self, records: Sequence[HardExampleRecord], received_at: float) -> list[bool]:
        """Store a batch in one transaction (True for each new one), then trim to `max_rows`, oldest first."""
        new = []
        with self.db.transaction() as tx:
            for r in records:
                tensors = json.dumps([[t.name, t.dtype, list(t.shape)] for t in r.tensors])
                changed = tx.execute(
                    f"INSERT INTO hard_examples ({_COLUMNS}, blob) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT DO NOTHING",
                    [
                        r.device_id,
                        r.example_id,
                        r.model,
                        r.version,
                        r.label,
                        r.confidence,
                        r.source,
                        r.request_id,
                        r.created_at,
                        received_at,
                        tensors,
                        r.blob,
                    ],
                )
                new.append(changed == 1)
            if any(new):
                top = tx.query("SELECT MAX(n) AS top FROM hard_examples")[0]["top"] or 0
                tx.execute("DELETE FROM hard_examples WHERE n <= ?", [top - self.max_rows])
        return new

    def count(self) -> int:
        return int(self.db.query("SELECT COUNT(*) AS c FROM hard_examples")[0]["c"])

    def list(
        self,
        device_id: str | None = None,
        model: str | None = None,
        version: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Newest first, without the tensor bytes; and how many match in all."""
        clauses, params = ["1=1"], []
        for column, value in (("device_id", device_id), ("model", model), ("version", version)):
            if value:
                clauses.append(f"{column}=?")
                params.append(value)
        where = " AND ".join(clauses)
        total = int(self.db.query(f"SELECT COUNT(*) AS c FROM hard_examples WHERE {where}", params)[0]["c"])
        rows = self.db.query(
            f"SELECT {_COLUMNS}, LENGTH(blob) AS bytes FROM hard_examples WHERE {where} "
            "ORDER BY n DESC LIMIT ? OFFSET ?",
            params + [limit, offset],
        )
        for row in rows:
            row["id"] = row.pop("example_id")
            row["tensors"] = [{"name": n, "dtype": d, "shape": s} for n, d, s in json.loads(row["tensors"])]
        return rows, total

    def npz(self, device_id: str, example_id: int) -> bytes:
        rows = self.db.query(
            "SELECT blob FROM hard_examples WHERE device_id=? AND example_id=?", [device_id, example_id]
        )
        if not rows:
            raise NotFoundError(f"no hard example {example_id} from device {device_id!r} (it may have aged out)")
        return to_npz(rows[0]["blob"])


@dataclass(frozen=True)
class HardExampleIngestConfig:
    mqtt_url: str
    client_id: str = "tandem-hub-hard-examples"  # stable: the broker keeps this session while the hub is away
    max_rows: int = DEFAULT_MAX_ROWS
    session_expiry_s: int = 24 * 3600
    receive_maximum: int = 200
    batch_max: int = 100
    batch_wait_s: float = 0.05
    keepalive_s: int = 10
    tls: TlsFiles | None = None  # the hub's MQTT identity (mqtts://); None: plain text


@dataclass
class HardExampleStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    bad: int = 0
    store_errors: int = 0


class HardExampleIngest:
    """Hub service (`Hub.add_service`): subscribes every device's /hard_examples; `hub.hard_examples` is this."""

    def __init__(self, config: HardExampleIngestConfig | None = None, store: HardExampleStore | None = None) -> None:
        self.config = config
        self.store = store
        self.stats = HardExampleStats()
        self._owns_store = store is None
        self._queue: queue.SimpleQueue[tuple[int, int, str, bytes, int]] = queue.SimpleQueue()
        self._generation = 0
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._writer: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._hub: Any = None
        self._last_bad_log = 0.0
        # why the store cannot be written now (disk full, locked) and since when; None once a batch commits.
        # Shown on the hub's /healthz: meanwhile messages wait unacknowledged in the broker, nothing is lost.
        self.write_error: str | None = None
        self.write_error_since: float | None = None

    def wait_subscribed(self, timeout_s: float) -> bool:
        return self._subscribed.wait(timeout_s)

    # -- HubService --------------------------------------------------------------------

    def start(self, hub: Any) -> None:
        config = self.config or HardExampleIngestConfig(mqtt_url=hub.mqtt_url)
        if not config.mqtt_url:
            raise HubError("hard-example ingestion needs the hub's MQTT broker")
        self.config = config
        if self.store is None:
            where = hub.config.storage.database_url or hub.config.data_dir / HARD_EXAMPLES_DB_FILENAME
            self.store = HardExampleStore.open(where, config.max_rows)
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        host, port = configure_mqtt_client(client, config.mqtt_url, config.tls, "hard-example ingest")
        set_reconnect_delay(client, 0.2, 2.0)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *a: self._subscribed.set()
        client.on_disconnect = lambda *a: self._subscribed.clear()
        client.on_message = lambda c, u, msg: self._queue.put(
            (self._generation, msg.mid, msg.topic, bytes(msg.payload), msg.qos)
        )
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = config.session_expiry_s
        props.ReceiveMaximum = config.receive_maximum
        props.MaximumPacketSize = limits.MAX_MQTT_PAYLOAD_BYTES + limits.MQTT_PACKET_OVERHEAD_BYTES
        client.connect_async(host, port, keepalive=config.keepalive_s, clean_start=False, properties=props)
        self._client = client
        self._writer = threading.Thread(target=self._write_loop, name="hub-hard-examples", daemon=True)
        self._writer.start()
        client.loop_start()
        self._hub = hub
        hub.hard_examples = self
        log.info(
            "hard-example ingest started mqtt=%s db=%s max_rows=%d",
            config.mqtt_url,
            self.store.db.path,
            config.max_rows,
        )

    def stop(self) -> None:
        if self._hub is not None:
            self._hub.hard_examples = None  # the routes answer 503 from now on
            self._hub = None
        self._stop.set()
        if self._client is not None:
            disconnect_and_stop(self._client)
            self._client = None
        if self._writer is not None:
            self._writer.join(10)
            self._writer = None
        if self._owns_store and self.store is not None:
            self.store.close()
            self.store = None

    # -- paho thread ----------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("hard-example ingest connect refused reason=%s", reason_code)
            return
        self._generation += 1
        client.subscribe(all_devices(HARD_EXAMPLES), qos=1)

    # -- writer thread ----------------------------------------------------------------------

    def _write_failed(self, exc: BaseException) -> None:
        if self.write_error_since is None:
            self.write_error_since = time.time()
        self.write_error = f"{type(exc).__name__}: {exc}"

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            batch = take_batch(self._queue, self.config.batch_max, self.config.batch_wait_s)  # type: ignore[union-attr]
            if batch:
                self._process(batch)

    def _process(self, batch: list[tuple[int, int, str, bytes, int]]) -> None:
        now = time.time()
        records = []
        for _, _, topic, payload, _ in batch:
            self.stats.received += 1
            try:
                records.append(decode_upload(payload, parse_topic(topic).device_id))
            except (TopicError, TelemetryDecodeError) as exc:
                self.stats.bad += 1
                if now - self._last_bad_log > 5.0:  # a flood of garbage must not flood the log
                    log.warning("bad hard example topic=%r error=%s bad_total=%d", topic[:200], exc, self.stats.bad)
                    self._last_bad_log = now
        while not self._stop.is_set():
            try:
                new = self.store.insert(records, now) if records else []  # type: ignore[union-attr]
                break
            except Exception as exc:  # disk full, locked: keep the batch unacked and retry
                self.stats.store_errors += 1
                self._write_failed(exc)
                if isinstance(exc, DatabaseUnavailableError):  # PostgreSQL away: a line per 30 s, not per second
                    _failures.failed("hard-example store failed batch=%d", exc, len(records))
                else:
                    log.error("hard-example store failed batch=%d error=%s; retrying", len(records), exc)
                self._stop.wait(1.0)
        else:
            return  # stopping without a commit: no acks, the broker redelivers to the next session
        self.write_error = self.write_error_since = None
        self.stats.stored += sum(new)
        self.stats.duplicates += len(new) - sum(new)
        if self._client is not None:
            ack_batch(self._client, batch, self._generation)
