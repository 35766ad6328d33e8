"""The float outputs of ai.onnx.ml operators, typed in the graph: ONNX's shape inference records no type
for most of them, and ONNX Runtime's tools need one.

Its float16 converter keeps ai.onnx.ml operators (Scaler, LinearClassifier, ...) in FP32 and
casts their outputs back to FP16 only where the graph records the output's type; ONNX's shape inference
records none for most of them. skl2onnx's StandardScaler + MLPClassifier then converted to a Scaler
feeding an FP16 MatMul an FP32 tensor, and the file did not load ("Type parameter (T) of Optype (MatMul)
bound to different types"). Its INT8 quantizer left the first MatMul's input unquantized ("failed to
infer the type of tensor"). The types come from the operators' definitions (ai.onnx.ml opset 3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

_FLOAT = 1
# op type -> the element type of each output: an int, or "input" (that of input 0), or None (leave it:
# a classifier's label is int64 or string depending on its attributes)
_OUTPUTS: dict[str, tuple[int | str | None, ...]] = {
    "Scaler": (_FLOAT,),
    "Normalizer": (_FLOAT,),
    "LinearRegressor": (_FLOAT,),
    "SVMRegressor": (_FLOAT,),
    "TreeEnsembleRegressor": (_FLOAT,),
    "OneHotEncoder": (_FLOAT,),
    "FeatureVectorizer": (_FLOAT,),
    "LinearClassifier": (None, _FLOAT),
    "SVMClassifier": (None, _FLOAT),
    "TreeEnsembleClassifier": (None, _FLOAT),
    "Binarizer": ("input",),
    "Imputer": ("input",),
    "ArrayFeatureExtractor": ("input",),
}


def type_ml_outputs(model: onnx.ModelProto) -> int:
    """Add (in place) a value_info with the element type of each main-graph ai.onnx.ml output whose type
    the graph does not record and the table knows; returns how many were added."""
    graph = model.graph
    known: dict[str, int] = {i.name: i.data_type for i in graph.initializer}
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            known[v.name] = v.type.tensor_type.elem_type
    added = 0
    for node in graph.node:
        if node.domain != "ai.onnx.ml" or node.op_type not in _OUTPUTS:
            continue
        for name, kind in zip(node.output, _OUTPUTS[node.op_type]):
            elem = known.get(node.input[0]) if kind == "input" else kind
            if not name or name in known or not isinstance(elem, int):
                continue
            info = graph.value_info.add()
            info.name = name
            info.type.tensor_type.elem_type = elem
            known[name] = elem
            added += 1
    return added
