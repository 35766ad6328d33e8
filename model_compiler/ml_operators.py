"""Which runtimes can run a model's ai.onnx.ml operators (scikit-learn's LinearClassifier,
TreeEnsembleClassifier, Scaler, ... as skl2onnx exports them): ONNX Runtime runs them all, OpenVINO
converts a few (Normalizer) and not the rest, the LiteRT lowering none. Decided once, before any
variant is built, so the report says per profile which runtime cannot run which operator."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from tandem.model_compiler.model_io import graphs_within

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

ML_DOMAIN = "ai.onnx.ml"
_OPENVINO_NAMED = re.compile(r"ai\.onnx\.ml\.(\w+)")
_OPENVINO_NO_RULE = re.compile(r"No conversion rule found for operations:([^\n]*)")


def ml_operators(model: onnx.ModelProto) -> list[str]:
    """The ai.onnx.ml operator types the model uses, subgraphs included, sorted."""
    return sorted({n.op_type for g in graphs_within(model.graph) for n in g.node if n.domain == ML_DOMAIN})


def _openvino_cannot(model_path: Path, ops: list[str]) -> list[str]:
    """The ai.onnx.ml operators OpenVINO's ONNX frontend has no conversion for, from one conversion try
    (its error names each as 'ai.onnx.ml.X'); [] when it converts or is not installed (the plan says so)."""
    try:
        import openvino as ov

        from tandem.model_compiler.variants.openvino import root_logging_kept, telemetry_off
    except ImportError:
        return []
    telemetry_off()
    try:
        with root_logging_kept():  # a failed conversion sets the root logger to ERROR for the process
            ov.convert_model(str(model_path))
    except Exception as exc:  # OpConversionFailure: the message lists the operators
        text = str(exc)
        # "No conversion rule found" names the missing ones; "Conversion is failed for" also names those
        # downstream of them (a Normalizer after a LinearClassifier), which OpenVINO does convert
        no_rule = _OPENVINO_NO_RULE.search(text)
        named = set(_OPENVINO_NAMED.findall(no_rule.group(1) if no_rule else text))
        return sorted(named & set(ops))
    return []


def refusal(runtime: str, missing: list[str]) -> str:
    """Why `runtime` gets no variant of this model, in a line for the report."""
    return (
        f"{runtime} cannot run operator{'s' if len(missing) > 1 else ''} {', '.join(missing)} (domain {ML_DOMAIN}); "
        f"ONNX Runtime runs {'them' if len(missing) > 1 else 'it'}: profiles with an onnxruntime target get this "
        "model's variants"
    )


def runtimes_that_cannot(runtimes: Iterable[str], model_path: Path, ops: list[str]) -> dict[str, list[str]]:
    """runtime -> the model's ai.onnx.ml operators it cannot run, for each of `runtimes` that cannot one."""
    if not ops:
        return {}
    refused: dict[str, list[str]] = {}
    for runtime in dict.fromkeys(runtimes):
        if runtime == "litert":
            refused[runtime] = ops  # the TFLite lowering (model_compiler/litert) has no ai.onnx.ml operator
        elif runtime == "openvino":
            missing = _openvino_cannot(model_path, ops)
            if missing:
                refused[runtime] = missing
    return refused
