"""The agent's outbox: messages wait on disk (SQLite, WAL) until the broker acknowledges them.

Three classes of data share one budget (rows and bytes), each with its own quota:
0 = OTA status and rollout health, 1 = hard examples, 2 = routine telemetry windows.
The sender always takes the most important class first; under pressure the least
important class is dropped first (oldest within it), so a day-long outage costs old
telemetry windows before it costs a single OTA status. Drops are counted per class,
persisted, and ride on every later window (`outbox_dropped`, and the historical
`outbox_dropped_total` for windows) so the hub can tell a drop from a loss.

Append happens before send; a window's sequence is assigned in the same transaction
that persists the counter, so a crash can neither lose a window nor reuse a number.
synchronous=FULL: with NORMAL a power cut could roll back a committed append after it
was already sent, and the next window would reuse that sequence (the hub would drop it
as a duplicate). A row leaves only on `ack` (the broker's PUBACK) or by a counted drop.

Version 1 files (windows only, no classes) are migrated in place on open: every
waiting row becomes a class-2 telemetry row, so an upgraded agent keeps its backlog.
"""

from __future__ import annotations

import builtins
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal, Mapping, NamedTuple

from tandem.edge_agent.errors import AgentError, DataFileError, is_damaged_database
from tandem.edge_agent.telemetry.seqfloor import SequenceFloor
from tandem.protocols import topics
from tandem.protocols.telemetry_codec import TelemetryWindow, encode_window

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 8640  # one day of 10 s windows
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # the whole outbox on disk (payload bytes)
DEFAULT_REPLAY_S = 3600.0  # acknowledged windows kept this long for the hub's resend requests
DEFAULT_REPLAY_BYTES = 16 * 1024 * 1024  # ... and at most this many payload bytes of them (oldest go first)

STATUS, HARD_EXAMPLES, TELEMETRY = 0, 1, 2
CLASS_NAMES = {STATUS: "status", HARD_EXAMPLES: "hard_examples", TELEMETRY: "telemetry"}
CLASS_OF_KIND = {topics.OTA_STATUS: STATUS, topics.HARD_EXAMPLES: HARD_EXAMPLES, topics.TELEMETRY: TELEMETRY}
SCHEMA_VERSION = 2


class OutboxError(AgentError):
    """The outbox database cannot be opened or written (disk full, permissions, corrupt file)."""

    code = "telemetry_outbox"


class OutboxDamagedError(OutboxError, DataFileError):
    """The outbox file is damaged, truncated or not SQLite (at open); the message names it and the way out."""

    code = "data_file"


@dataclass(frozen=True)
class ClassQuota:
    """The most one class may hold, whatever room the whole outbox has left."""

    max_rows: int
    max_bytes: int

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_bytes < 1:
            raise OutboxError(
                f"outbox quota: max_rows and max_bytes must be >= 1, got {self.max_rows}, {self.max_bytes}"
            )


def default_quotas(max_rows: int = DEFAULT_MAX_ROWS, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[int, ClassQuota]:
    """Statuses are tiny and few; hard examples are big, so they get a quarter of the bytes; windows may use all."""
    return {
        STATUS: ClassQuota(min(max_rows, 2000), min(max_bytes, 4 * 1024 * 1024)),
        HARD_EXAMPLES: ClassQuota(min(max_rows, 2000), max(1, max_bytes // 4)),
        TELEMETRY: ClassQuota(max_rows, max_bytes),
    }


class Pending(NamedTuple):
    """One waiting message: its outbox row id (what `ack` takes), class, topic kind and payload."""

    row: int
    klass: int
    kind: str
    payload: bytes


class Outbox:
    """Classed, budgeted messages on disk; thread-safe (one connection behind a lock)."""

    def __init__(
        self,
        path: str | Path,
        max_rows: int = DEFAULT_MAX_ROWS,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        quotas: Mapping[int, ClassQuota] | None = None,
        replay_s: float = DEFAULT_REPLAY_S,
        replay_bytes: int = DEFAULT_REPLAY_BYTES,
    ) -> None:
        """`replay_s` / `replay_bytes`: how long, and how much, acknowledged windows are kept so
        the hub can ask for them again (a broker that lost them after its PUBACK); 0 keeps none."""
        if max_rows < 1 or max_bytes < 1:
            raise OutboxError(f"outbox: max_rows and max_bytes must be >= 1, got {max_rows}, {max_bytes}")
        if replay_s < 0 or replay_bytes < 0:
            raise OutboxError(f"outbox: replay_s and replay_bytes must be >= 0, got {replay_s}, {replay_bytes}")
        self.replay_s, self.replay_bytes = replay_s, replay_bytes
        self._replay_size = 0
        self.resent = 0  # windows sent again on the hub's request
        self.resend_missing = 0  # asked for but no longer here (past the replay bounds, or dropped)
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.quotas = {**default_quotas(max_rows, max_bytes), **dict(quotas or {})}
        unknown = set(self.quotas) - set(CLASS_NAMES)
        if unknown:
            raise OutboxError(f"outbox quotas: unknown class {sorted(unknown)}; classes are {CLASS_NAMES}")
        self._lock = threading.Lock()
        self._usage: dict[int, list[int]] = {c: [0, 0] for c in CLASS_NAMES}  # class -> [rows, bytes]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            fresh = self._conn.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone() is None
            self._migrate()
            self._reload_usage()
            self._floor = SequenceFloor(self.path.with_name(self.path.stem + ".seq"))
            if fresh and self._floor.reserved:
                self._start_after_floor()
        except sqlite3.Error as exc:
            self._close_quietly()
            if not is_damaged_database(exc):
                raise OutboxError(f"{self.path}: cannot open the telemetry outbox ({exc})") from exc
            raise OutboxDamagedError(  # damaged, truncated, not SQLite: say which file and the way out
                f"{self.path}: the telemetry outbox cannot be opened ({exc}); its waiting messages are in it: keep "
                "the file (`sqlite3 FILE .recover` may save them), move it aside and start the agent again, which "
                "creates an empty outbox"
            ) from exc

    def _start_after_floor(self) -> None:
        """A new outbox where an old one numbered windows: go on after every number it may have used."""
        self._conn.execute("UPDATE meta SET value=? WHERE key='last_sequence'", [self._floor.reserved])
        log.warning(
            "telemetry outbox is new path=%s; window numbers continue after %d (%s), so the hub does not take "
            "new windows for old ones; windows the old outbox had not sent are counted lost by the hub",
            self.path,
            self._floor.reserved,
            self._floor.path.name,
        )

    def _close_quietly(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()

    def _migrate(self) -> None:
        """Create a v2 outbox, or upgrade a v1 one (windows only) without losing a row."""
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL, "
                "created_at REAL NOT NULL)"
            )
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            c.execute("INSERT OR IGNORE INTO meta VALUES ('last_sequence', 0), ('dropped_total', 0)")
            columns = {row[1] for row in c.execute("PRAGMA table_info(outbox)")}
            if "klass" not in columns:  # v1: every row is a telemetry window whose seq is its sequence
                c.execute(f"ALTER TABLE outbox ADD COLUMN klass INTEGER NOT NULL DEFAULT {TELEMETRY}")
                c.execute(f"ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT '{topics.TELEMETRY}'")
                c.execute("ALTER TABLE outbox ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
                c.execute("UPDATE outbox SET size=length(payload)")
            c.execute("CREATE INDEX IF NOT EXISTS outbox_class ON outbox (klass, seq)")
            # acknowledged telemetry windows by their sequence, kept for the hub's resend requests
            c.execute(
                "CREATE TABLE IF NOT EXISTS sent (sequence INTEGER PRIMARY KEY, payload BLOB NOT NULL, "
                "sent_at REAL NOT NULL, size INTEGER NOT NULL)"
            )
            # Row ids never repeat (the sender's in-flight map is keyed by them): a counter, not max(seq)+1.
            c.execute(
                "INSERT OR IGNORE INTO meta SELECT 'last_row', MAX(COALESCE(MAX(seq), 0), "
                "(SELECT value FROM meta WHERE key='last_sequence')) FROM outbox"
            )
            for klass in CLASS_NAMES:
                c.execute("INSERT OR IGNORE INTO meta VALUES (?, 0)", [_dropped_key(klass)])
            c.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", [SCHEMA_VERSION])
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    # -- writers -------------------------------------------------------------------------

    def append(self, window: TelemetryWindow, lost_before: int = 0) -> int:
        """Number the window, store it (class 2), and return its sequence; room is made by `_evict`.

        `lost_before`: windows that closed before this one but never reached the disk (the
        outbox could not be written, e.g. a full disk, for longer than the caller could hold
        them). Their sequence numbers are skipped, so the hub sees the gap, and they are
        counted as telemetry drops in the same transaction, so the window that follows says
        the gap is a counted local loss, not a lost message.
        """
        if lost_before < 0:
            raise OutboxError(f"outbox append: lost_before must be >= 0, got {lost_before}")
        with self._lock:
            try:
                with self._transaction():
                    seq = self._meta("last_sequence") + 1 + lost_before
                    self._floor.reserve(seq)  # on disk before the number is used (see seqfloor)
                    if lost_before:
                        self._count_drop(TELEMETRY, lost_before)
                    window.sequence = seq
                    self._stamp_drops(window)
                    size = len(encode_window(window))
                    stored = self._evict(TELEMETRY, size)
                    self._stamp_drops(window)  # eviction may have counted more
                    payload = encode_window(window)
                    if stored:
                        self._insert(TELEMETRY, topics.TELEMETRY, payload)
                    self._set_meta("last_sequence", seq)
            except (sqlite3.Error, OSError) as exc:
                raise OutboxError(f"{self.path}: cannot append a telemetry window ({exc})") from exc
        return seq

    def append_message(self, kind: str, payload: bytes, klass: int | None = None) -> int | None:
        """Store one opaque message for topic `kind` (its class by kind unless given); its row id, or None if dropped.

        The payload carries its own stream sequence (OTA statuses and hard examples number
        themselves), so nothing is rewritten here.
        """
        return self.append_many(kind, [payload], klass)[0]

    def append_many(self, kind: str, payloads: Iterable[bytes], klass: int | None = None) -> list[int | None]:
        """Several messages of one kind in one transaction (one fsync): row ids, None where dropped."""
        klass = CLASS_OF_KIND.get(kind, TELEMETRY) if klass is None else klass
        if klass not in CLASS_NAMES:
            raise OutboxError(f"outbox class {klass!r}: expected one of {CLASS_NAMES}")
        if kind not in topics.DEVICE_PUBLISHES:
            raise OutboxError(
                f"outbox kind {kind!r}: not a topic a device publishes ({', '.join(topics.DEVICE_PUBLISHES)})"
            )
        out: list[int | None] = []
        with self._lock:
            try:
                with self._transaction():
                    for payload in payloads:
                        out.append(self._insert(klass, kind, payload) if self._evict(klass, len(payload)) else None)
            except sqlite3.Error as exc:
                raise OutboxError(f"{self.path}: cannot append {kind} messages ({exc})") from exc
        return out

    def ack(self, row: int) -> None:
        """The broker has the message: take it off the queue (a no-op if it was already dropped or acked).

        A telemetry window moves to the replay store, where it stays for replay_s / replay_bytes
        in case the hub finds it missing (the broker's ack is not the hub's).
        """
        with self._lock:
            try:
                found = self._conn.execute(
                    "SELECT klass, size, kind, payload FROM outbox WHERE seq=?", [row]
                ).fetchone()
                if found is None:
                    return
                with self._transaction():
                    self._conn.execute("DELETE FROM outbox WHERE seq=?", [row])
                    self._account(int(found[0]), -1, -int(found[1]))
                    if found[2] == topics.TELEMETRY and self.replay_s > 0 and self.replay_bytes > 0:
                        self._keep_for_replay(bytes(found[3]))
            except sqlite3.Error as exc:
                raise OutboxError(f"{self.path}: cannot delete acknowledged message {row} ({exc})") from exc

    def resend(self, sequences: Iterable[int]) -> tuple[int, int]:
        """Queue these acknowledged windows again (class 2, same bytes: the hub dedupes on sequence);
        (found, missing). Missing ones are past the replay bounds or were dropped under pressure."""
        wanted = sorted(set(int(s) for s in sequences))
        found = 0
        with self._lock:
            try:
                with self._transaction():
                    self._prune_replay(time.time())
                    for seq in wanted:
                        hit = self._conn.execute("SELECT payload FROM sent WHERE sequence=?", [seq]).fetchone()
                        if hit is not None:
                            self._insert(TELEMETRY, topics.TELEMETRY, bytes(hit[0]))
                            found += 1
            except sqlite3.Error as exc:
                raise OutboxError(f"{self.path}: cannot queue resent windows ({exc})") from exc
            self.resent += found
            self.resend_missing += len(wanted) - found
        return found, len(wanted) - found

    def replay_stats(self) -> dict[str, float | int]:
        with self._lock:
            n = int(self._conn.execute("SELECT COUNT(*) FROM sent").fetchone()[0])
            return {
                "windows": n,
                "bytes": self._replay_size,
                "replay_s": self.replay_s,
                "replay_bytes": self.replay_bytes,
                "resent": self.resent,
                "resend_missing": self.resend_missing,
            }

    # -- readers -------------------------------------------------------------------------

    def next_batch(self, limit: int = 100, exclude: Iterable[int] = ()) -> list[Pending]:
        """What to send next: most important class first, oldest first within it, skipping rows in `exclude`."""
        skip = sorted(set(exclude))
        where = f"WHERE seq NOT IN ({','.join('?' * len(skip))})" if skip else ""
        with self._lock:
            return [
                Pending(*r)
                for r in self._conn.execute(
                    f"SELECT seq, klass, kind, payload FROM outbox {where} ORDER BY klass, seq LIMIT ?", [*skip, limit]
                )
            ]

    def pending(self, after: int = 0, limit: int = 100) -> list[tuple[int, bytes]]:
        """Unacknowledged (row, payload) with row > after, in arrival order (a cursor for single-class senders)."""
        with self._lock:
            return list(
                self._conn.execute("SELECT seq, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", [after, limit])
            )

    def __len__(self) -> int:
        with self._lock:
            return sum(rows for rows, _ in self._usage.values())

    def depth(self, klass: int) -> int:
        with self._lock:
            return self._usage[klass][0]

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._usage.values())

    @property
    def last_sequence(self) -> int:
        with self._lock:
            return self._meta("last_sequence")

    @property
    def dropped_total(self) -> int:
        """Telemetry windows dropped (the historical meaning, as on the wire's outbox_dropped_total)."""
        with self._lock:
            return self._meta(_dropped_key(TELEMETRY))

    def dropped(self) -> dict[str, int]:
        """Messages dropped under pressure, by class name, since the outbox file was created."""
        with self._lock:
            return self._drops()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per class name: rows and bytes waiting, quota, and drops (status pages and metrics)."""
        with self._lock:
            drops = self._drops()
            return {
                name: {
                    "rows": self._usage[k][0],
                    "bytes": self._usage[k][1],
                    "dropped": drops[name],
                    "max_rows": self.quotas[k].max_rows,
                    "max_bytes": self.quotas[k].max_bytes,
                }
                for k, name in CLASS_NAMES.items()
            }

    def room(self, klass: int) -> int:
        """Rows `klass` may still take before its own quota evicts its oldest (the total budget may still
        evict less important classes to make room: that is the point of priorities)."""
        with self._lock:
            return max(0, self.quotas[klass].max_rows - self._usage[klass][0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- internals (lock held) -------------------------------------------------------------

    def _evict(self, klass: int, size: int) -> bool:
        """Make room for one `klass` message of `size` bytes; False if it is itself the one to drop.

        First its own quota (oldest of its class go), then the total budget: the least
        important class present goes first, oldest first; a class never evicts a more
        important one, so when only those remain the newcomer is dropped instead.
        """
        quota = self.quotas[klass]
        if size > quota.max_bytes or size > self.max_bytes:
            self._count_drop(klass, 1)
            log.warning("outbox message over its quota class=%s bytes=%d dropped", CLASS_NAMES[klass], size)
            return False
        self._drop_oldest(
            klass, lambda: self._usage[klass][0] + 1 > quota.max_rows or self._usage[klass][1] + size > quota.max_bytes
        )

        def over_budget() -> bool:
            return (
                sum(r for r, _ in self._usage.values()) + 1 > self.max_rows
                or sum(b for _, b in self._usage.values()) + size > self.max_bytes
            )

        for victim in sorted(CLASS_NAMES, reverse=True):
            if victim < klass or not over_budget():
                break
            self._drop_oldest(victim, over_budget)
        if over_budget():
            self._count_drop(klass, 1)
            log.warning("outbox full of more important data class=%s dropped the newest", CLASS_NAMES[klass])
            return False
        return True

    def _drop_oldest(self, klass: int, still_over: Callable[[], bool]) -> None:
        dropped = 0
        while still_over() and self._usage[klass][0] > 0:
            rows = self._conn.execute(
                "SELECT seq, size FROM outbox WHERE klass=? ORDER BY seq LIMIT 64", [klass]
            ).fetchall()
            for row, size in rows:
                self._conn.execute("DELETE FROM outbox WHERE seq=?", [row])
                self._account(klass, -1, -int(size))
                dropped += 1
                if not still_over():
                    break
        if dropped:
            total = self._count_drop(klass, dropped)
            log.warning(
                "outbox under pressure class=%s dropped_oldest=%d dropped_total=%d rows=%d bytes=%d",
                CLASS_NAMES[klass],
                dropped,
                total,
                sum(r for r, _ in self._usage.values()),
                sum(b for _, b in self._usage.values()),
            )

    def _keep_for_replay(self, payload: builtins.bytes) -> None:  # builtins: Outbox.bytes shadows the type
        from tandem.protocols.telemetry_codec import TelemetryDecodeError, decode_window

        try:
            sequence = decode_window(payload).sequence
        except TelemetryDecodeError:
            return
        self._conn.execute(
            "INSERT OR REPLACE INTO sent VALUES (?, ?, ?, ?)", [sequence, payload, time.time(), len(payload)]
        )
        self._replay_size += len(payload)
        self._prune_replay(time.time())

    def _prune_replay(self, now: float) -> None:
        """Forget replayable windows older than replay_s, then the oldest past replay_bytes."""
        self._conn.execute("DELETE FROM sent WHERE sent_at < ?", [now - self.replay_s])
        size = int(self._conn.execute("SELECT COALESCE(SUM(size), 0) FROM sent").fetchone()[0])
        while size > self.replay_bytes:
            row = self._conn.execute("SELECT sequence, size FROM sent ORDER BY sequence LIMIT 1").fetchone()
            if row is None:
                break
            self._conn.execute("DELETE FROM sent WHERE sequence=?", [row[0]])
            size -= int(row[1])
        self._replay_size = size

    def _insert(self, klass: int, kind: str, payload: builtins.bytes) -> int:
        row = self._meta("last_row") + 1
        self._conn.execute(
            "INSERT INTO outbox (seq, payload, created_at, klass, kind, size) VALUES (?, ?, ?, ?, ?, ?)",
            [row, payload, time.time(), klass, kind, len(payload)],
        )
        self._set_meta("last_row", row)
        self._account(klass, 1, len(payload))
        return row

    def _account(self, klass: int, rows: int, size: int) -> None:
        usage = self._usage.setdefault(klass, [0, 0])
        usage[0] += rows
        usage[1] += size

    def _count_drop(self, klass: int, n: int) -> int:
        key = _dropped_key(klass)
        total = self._meta(key) + n
        self._set_meta(key, total)
        return total

    def _drops(self) -> dict[str, int]:
        return {name: self._meta(_dropped_key(k)) for k, name in CLASS_NAMES.items()}

    def _stamp_drops(self, window: TelemetryWindow) -> None:
        drops = self._drops()
        window.outbox_dropped_total = drops[CLASS_NAMES[TELEMETRY]]
        window.outbox_dropped.clear()
        window.outbox_dropped.update({k: v for k, v in drops.items() if v})

    def _transaction(self) -> "_Tx":
        return _Tx(self)

    def _meta(self, key: str) -> int:
        return int(self._conn.execute("SELECT value FROM meta WHERE key=?", [key]).fetchone()[0])

    def _set_meta(self, key: str, value: int) -> None:
        self._conn.execute("UPDATE meta SET value=? WHERE key=?", [value, key])

    def _reload_usage(self) -> None:
        for klass in self._usage:
            self._usage[klass] = [0, 0]
        for klass, rows, size in self._conn.execute("SELECT klass, COUNT(*), SUM(size) FROM outbox GROUP BY klass"):
            self._usage.setdefault(int(klass), [0, 0])[:] = [int(rows), int(size or 0)]


class _Tx:
    """BEGIN IMMEDIATE .. COMMIT; on any error ROLLBACK and recount the in-memory usage from disk."""

    def __init__(self, box: Outbox) -> None:
        self.box = box

    def __enter__(self) -> None:
        self.box._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> Literal[False]:
        conn = self.box._conn
        if exc_type is None:
            try:
                conn.execute("COMMIT")
                return False
            except sqlite3.Error:
                self._undo()
                raise
        self._undo()
        return False

    def _undo(self) -> None:
        try:
            self.box._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self.box._reload_usage()


def _dropped_key(klass: int) -> str:
    # 'dropped_total' kept its v1 meaning (telemetry windows dropped), so v1 files carry their count over
    return "dropped_total" if klass == TELEMETRY else f"dropped_{CLASS_NAMES[klass]}"
