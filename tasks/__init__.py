"""What a model's outputs mean, read the same way by compiler, agent, hub and simulator.

Pure numpy on the lowest floor: imports nothing of ours and does no I/O.
"""

from __future__ import annotations

from tandem.tasks.agreement import row_agreement
from tandem.tasks.confidence import DEFAULT_THRESHOLDS, TaskConfidence, confidence_measure, task_confidence
from tandem.tasks.decode import Detections, class_labels, class_probabilities, ctc_greedy, dense_masks, detections
from tandem.tasks.errors import TaskError
from tandem.tasks.infer import Inferred, infer_task
from tandem.tasks.metrics import DIRECTIONS, PRIMARY, GateResult, budgets_for, gate, task_metrics
from tandem.tasks.spec import KINDS, TaskSpec

__all__ = [
    "DEFAULT_THRESHOLDS",
    "DIRECTIONS",
    "Detections",
    "GateResult",
    "Inferred",
    "KINDS",
    "PRIMARY",
    "TaskConfidence",
    "TaskError",
    "TaskSpec",
    "budgets_for",
    "class_labels",
    "class_probabilities",
    "confidence_measure",
    "ctc_greedy",
    "dense_masks",
    "detections",
    "gate",
    "infer_task",
    "row_agreement",
    "task_confidence",
    "task_metrics",
]
