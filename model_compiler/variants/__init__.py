"""Variant builders, one module per runtime; `get_builder` imports on demand so a
missing optional runtime only matters to the profiles that need it."""

from __future__ import annotations

import importlib

from tandem.model_compiler.variants.base import BuildContext, BuiltVariant, Recipe, VariantBuilder

BUILDERS: dict[str, str] = {
    "onnxruntime": "tandem.model_compiler.variants.onnxruntime:OnnxRuntimeBuilder",
    "openvino": "tandem.model_compiler.variants.openvino:OpenVINOBuilder",
    "litert": "tandem.model_compiler.variants.litert:LiteRTBuilder",
}


def get_builder(runtime: str) -> VariantBuilder:
    if runtime not in BUILDERS:
        raise KeyError(f"no variant builder for runtime {runtime!r} (known: {', '.join(BUILDERS)})")
    module_name, class_name = BUILDERS[runtime].split(":")
    return getattr(importlib.import_module(module_name), class_name)()


__all__ = ["BUILDERS", "BuildContext", "BuiltVariant", "Recipe", "VariantBuilder", "get_builder"]
