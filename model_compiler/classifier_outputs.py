"""scikit-learn classifiers as skl2onnx exports them, made servable: a ZipMap that turns the class
probabilities into a sequence of {label: probability} maps is removed, so the output is the
[N, classes] float tensor it was fed (skl2onnx's `zipmap=False` form), and the class labels it held
are kept for the task. A string label output (`y` of strings) goes too: the agent's local API and the
manifest carry fixed-size dtypes only, and the label is `labels[argmax(probabilities)]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tandem.model_compiler.model_io import drop_unused_initializers, graphs_within

if TYPE_CHECKING:
    import onnx

ML_DOMAIN = "ai.onnx.ml"
_STRING = 8
_FLOAT = 1
# the attribute of each ai.onnx.ml classifier (and ZipMap) that lists its class labels, per label type
_LABEL_ATTRS = {"classlabels_int64s": int, "classlabels_ints": int, "classlabels_strings": str}


@dataclass
class OutputRewrite:
    """What `strip_zipmap` changed: notes for the manifest and report, and the class labels found."""

    notes: list[str] = field(default_factory=list)
    labels: list[str] | list[int] | None = None
    probabilities: str | None = None  # the output that now holds [N, classes] probabilities


def class_labels_of(node: onnx.NodeProto) -> list[str] | list[int] | None:
    """The class labels a ZipMap or an ai.onnx.ml classifier node lists, None if it lists none."""
    from onnx import helper

    for attr in node.attribute:
        if attr.name in _LABEL_ATTRS:
            values = helper.get_attribute_value(attr)
            if values:
                if _LABEL_ATTRS[attr.name] is str:
                    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
                return [int(v) for v in values]
    return None


def _rename_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every node (subgraphs included, for outer-scope reads) that reads `old` reads `new`."""
    for g in graphs_within(graph):
        for node in g.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new


def _prune_dead_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes none of whose outputs is read or is a graph output (after an output was removed)."""
    while True:
        wanted = {o.name for o in graph.output} | {n for g in graphs_within(graph) for x in g.node for n in x.input}
        keep = [n for n in graph.node if any(o in wanted for o in n.output if o)]
        if len(keep) == len(graph.node):
            return
        del graph.node[:]
        graph.node.extend(keep)


def strip_zipmap(model: onnx.ModelProto) -> OutputRewrite:
    """Remove (in place) every ZipMap whose output is a graph output; the graph output keeps its name
    and becomes the float tensor the ZipMap read. Then remove a string label output when the labels
    are known. Returns the notes and the labels."""
    graph = model.graph
    done = OutputRewrite()
    outputs = {o.name: o for o in graph.output}
    input_names = {i.name for i in graph.input}
    for node in list(graph.node):
        if node.op_type != "ZipMap" or node.domain != ML_DOMAIN or node.output[0] not in outputs:
            continue
        fed, name = node.input[0], node.output[0]
        if fed in input_names or fed in outputs:
            continue  # a ZipMap of a graph input or of another output: renaming would change that one too
        labels = class_labels_of(node)
        graph.node.remove(node)
        for other in graph.node:
            for i, out in enumerate(other.output):
                if out == fed:
                    other.output[i] = name
        _rename_reads(graph, fed, name)
        out = outputs[name]
        out.type.Clear()
        out.type.tensor_type.elem_type = _FLOAT
        dims = out.type.tensor_type.shape.dim
        dims.add()  # samples: unknown here; shape inference may fill it in
        classes = dims.add()
        if labels:
            classes.dim_value = len(labels)
        drop_unused_initializers(graph, forget=(fed,))
        done.labels = done.labels or labels
        done.probabilities = done.probabilities or name
        done.notes.append(
            f"ZipMap removed: output {name!r} is the [N, {len(labels) if labels else 'classes'}] float tensor of "
            "class probabilities it was fed (skl2onnx's zipmap=False form), not a sequence of maps"
            + (f", class labels: {labels}" if labels else "")
        )
    if done.labels is None:
        classifiers = [n for n in graph.node if n.domain == ML_DOMAIN and n.op_type.endswith("Classifier")]
        if len(classifiers) == 1:
            done.labels = class_labels_of(classifiers[0])
    _drop_string_label_output(model, done)
    return done


def _drop_string_label_output(model: onnx.ModelProto, done: OutputRewrite) -> None:
    """A string output beside a probability output with known labels is the label, derivable: drop it."""
    graph = model.graph
    floats = [o for o in graph.output if o.type.HasField("tensor_type") and o.type.tensor_type.elem_type == _FLOAT]
    if not done.labels or not floats:
        return
    strings = [o for o in graph.output if o.type.HasField("tensor_type") and o.type.tensor_type.elem_type == _STRING]
    if not strings or len(strings) == len(graph.output):
        return
    for out in strings:
        graph.output.remove(out)
        done.notes.append(
            f"output {out.name!r} (tensor(string), the class label) removed: the manifest and the agent's local API "
            f"carry fixed-size dtypes only; the label is task.labels[argmax({floats[0].name})], "
            f"labels {done.labels}"
        )
    _prune_dead_nodes(graph)
    drop_unused_initializers(graph)
