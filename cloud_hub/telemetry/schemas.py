"""Response shapes of the telemetry and drift REST routes, so generated clients get typed objects.

Each model names every field the store and the drift engine write; `extra="allow"` keeps a field
added later flowing through (documented as additional properties) instead of being dropped silently.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class CohortOut(_Out):
    """The cohort a window is filed under: the device's profile and its cohort tags."""

    profile: str
    tags: dict[str, str] = Field(default_factory=dict)


class WindowOut(_Out):
    """One stored telemetry window's counts (the histograms stay in the stored payload)."""

    device_id: str
    sequence: int
    model_name: str
    model_version: str
    profile: str
    cohort: CohortOut
    start_unix: float
    end_unix: float
    received_at: float = Field(description="the hub's clock; time filters use it")
    edge: int
    cloud: int
    edge_degraded: int
    error: int
    samples: int
    latency_sum_ms: float
    latency_max_ms: float
    outbox_dropped_total: int


class DeviceSeriesOut(_Out):
    device_id: str
    source: str = Field(
        "raw",
        description="raw: `items` are stored windows; rollups: the raw windows no longer hold the range, "
        "`rollups` are the device's minute rows instead",
    )
    items: list[WindowOut]
    rollups: list[DeviceRollupPoint] | None = None


class ModelSeriesPoint(_Out):
    """One time bucket of a model version, summed over the fleet."""

    bucket_start: float
    model_version: str
    windows: int
    devices: int
    edge: int
    cloud: int
    edge_degraded: int
    error: int
    samples: int
    latency_mean_ms: float | None
    latency_max_ms: float | None


class ModelSeriesOut(_Out):
    model_name: str
    model_version: str | None
    bucket_s: float
    source: str = Field("raw", description="raw (stored windows) or rollups (per-device minute/hour rollups)")
    items: list[ModelSeriesPoint]


class DeviceRollupPoint(_Out):
    """One bucket of one device's windows (per model version it ran in that bucket)."""

    bucket: int = Field(description="bucket start, unix seconds on the hub's clock")
    model_name: str
    model_version: str
    windows: int
    edge: int
    cloud: int
    edge_degraded: int
    error: int
    samples: int
    latency_sum_ms: float
    latency_max_ms: float
    outbox_dropped_total: int
    latency_counts: list[int] = Field(description="requests per latency bin (protocols.telemetry_codec edges)")
    confidence_counts: list[int] = Field(default_factory=list, description="20 confidence bins (minute rows only)")
    class_counts: list[int] = Field(default_factory=list, description="top-1 classes (minute rows only)")
    shadow_samples: int = 0
    shadow_agree: int = 0


class DeviceRollupsOut(_Out):
    device_id: str
    bucket_s: int
    items: list[DeviceRollupPoint]


class DriftSignalOut(_Out):
    """One (model version, cohort, signal) of a drift evaluation; the statistics present depend on the
    signal: distributions carry psi/js/chi2/dof/p_value/n_ref/n_cur, rates carry rate/baseline_rate/
    p_value/n_cur/n_base, and a signal short of samples carries only its counts."""

    model_name: str
    model_version: str
    profile: str
    tags: dict[str, str] = Field(default_factory=dict)
    signal: str
    value: float | None = Field(description="PSI for distributions, the rate's rise for rates; null: too few samples")
    significant: bool
    alert: str = Field(description="open or closed")
    psi: float | None = None
    js: float | None = None
    chi2: float | None = None
    dof: int | None = None
    p_value: float | None = None
    n_ref: int | None = None
    n_cur: int | None = None
    n_base: int | None = None
    rate: float | None = None
    baseline_rate: float | None = None


class IngestStatsOut(_Out):
    received: int
    stored: int
    duplicates: int
    bad: int
    batches: int
    store_errors: int
    rate_limited: int


class GapPolicyOut(_Out):
    ask_after_s: float
    ask_every_s: float
    max_asks: int


class GapStatsOut(_Out):
    """Windows missing end to end across the fleet: open (being asked for again) and lost (given up)."""

    open: int
    lost: int
    recovered_since_start: int
    resend_requests: int
    policy: GapPolicyOut


class DeviceGapsOut(_Out):
    """One device's last sequence and its open and lost sequences (the first 100 of each)."""

    device_id: str
    last_sequence: int
    open: list[int]
    lost: list[int]


class DriftStatusOut(_Out):
    evaluated_at: float | None
    signals: list[DriftSignalOut]
    ingest: IngestStatsOut
    subscribed: bool
    gaps: GapStatsOut


class ClocksOut(_Out):
    offsets_s: dict[str, float] = Field(description="device id -> hub time minus device time (seconds)")


class DriftAlertOut(_Out):
    id: int
    model_name: str
    model_version: str
    cohort: CohortOut
    signal: str
    state: str = Field(description="open or closed")
    opened_at: float
    closed_at: float | None
    open_stats: DriftSignalOut
    last_stats: DriftSignalOut


DeviceSeriesOut.model_rebuild()
