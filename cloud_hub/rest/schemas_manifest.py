"""The signed manifest's shape for the OpenAPI document (protocols/manifest.py is the contract).

Only documentation: the route returns the stored manifest untouched (re-serializing it through a
model could reorder or drop a field its signatures cover). Runtime options, metrics, the task's
own fields and the compiler's source notes are JSON whose keys depend on the runtime or the task,
so they are typed as JSON values rather than fixed objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypeAliasType

if TYPE_CHECKING:  # mypy reads the plain recursive alias; pydantic needs TypeAliasType to name it in the schema
    JsonValue = Union[str, int, float, bool, None, list["JsonValue"], dict[str, "JsonValue"]]
else:
    JsonValue = TypeAliasType(
        "JsonValue", Union[str, int, float, bool, None, list["JsonValue"], dict[str, "JsonValue"]]
    )


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class TensorSpecDoc(_Doc):
    name: str
    dtype: str = Field(description="numpy name, one of protocols.manifest.DTYPES")
    shape: list[int] = Field(description="-1 marks a dynamic axis")


class FileEntryDoc(_Doc):
    path: str
    sha256: str
    size: int


class CalibrationDoc(_Doc):
    temperature: float
    threshold: float
    goal: dict[str, JsonValue]
    expected_fallback_rate: float
    measure: str = "max_prob"
    output: str | None = None
    expected_accuracy: float | None = None
    expected_hybrid_accuracy: float | None = None
    fit: dict[str, JsonValue] = Field(default_factory=dict)


class VariantDoc(_Doc):
    id: str
    runtime: str
    precision: str
    files: list[FileEntryDoc]
    inputs: list[TensorSpecDoc]
    outputs: list[TensorSpecDoc]
    profiles: list[str] = Field(default_factory=list)
    options: dict[str, JsonValue] = Field(default_factory=dict, description="runtime session options")
    metrics: dict[str, JsonValue] = Field(default_factory=dict, description="validation against the FP32 reference")
    calibration: CalibrationDoc | None = None


class ProfileChoiceDoc(_Doc):
    chosen: str | None
    reason: str
    candidates: list[str] = Field(default_factory=list)
    skipped: list[dict[str, str]] = Field(default_factory=list)


class GoldenDoc(_Doc):
    file: FileEntryDoc
    count: int
    atol: float
    min_top1_agreement: float


class TaskDoc(_Doc):
    """tandem.tasks.TaskSpec: `kind` and the fields of that kind (tasks.spec.FIELDS)."""

    kind: str
    output: str | None = None
    metric: str | None = None
    scores: str | None = None
    threshold: float | None = None
    positive_threshold: float | None = None
    layout: str | None = None
    box_format: str | None = None
    score_threshold: float | None = None
    iou_threshold: float | None = None
    ambiguity: list[float] | None = None
    max_boxes: int | None = None
    blank: int | None = None
    step_scores: str | None = None
    top_k: int | None = None
    labels: list[str | int] | None = Field(default=None, description="class names in score order (classification)")


class HistogramDoc(_Doc):
    edges: list[float] | None = None
    counts: list[int]


class DriftReferenceDoc(_Doc):
    """Reference histograms the hub's drift engine compares device telemetry with; task signals
    ("task:boxes", ...) are further histograms beside these."""

    __pydantic_extra__: dict[str, HistogramDoc] = Field(init=False)

    bins: int | None = None
    samples: int | None = None
    inputs: dict[str, dict[str, HistogramDoc]] = Field(
        default_factory=dict, description="input -> summary -> histogram"
    )
    confidence: HistogramDoc | None = None
    classes: HistogramDoc | None = None


class SignatureDoc(_Doc):
    alg: str = Field(description="ed25519")
    key_id: str
    value: str = Field(description="base64 of the signature over the canonical manifest")
    public_key: str | None = Field(None, description="base64 raw key, a trust-on-first-use hint only")


class ManifestDoc(_Doc):
    schema_version: int
    name: str
    version: str
    created_at: str
    expires_at: str | None
    task: TaskDoc
    inputs: list[TensorSpecDoc]
    outputs: list[TensorSpecDoc]
    variants: list[VariantDoc]
    profiles: dict[str, ProfileChoiceDoc]
    target_profiles: list[str]
    golden: GoldenDoc | None = None
    drift_reference: DriftReferenceDoc = Field(default_factory=DriftReferenceDoc)
    source: dict[str, JsonValue] = Field(default_factory=dict)
    signature: SignatureDoc | None = None
    publisher_signature: SignatureDoc | None = None
