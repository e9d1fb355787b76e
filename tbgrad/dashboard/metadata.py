"""What the Gradient-flow plugin reads besides the scalars: the layer order.

TensorBoard's data provider lists a run's tags as an unordered mapping, so
the order of the model's tracked variables (input first) is written once
per run, at step 0 of ``train/``, as a summary owned by this plugin: a
string tensor holding ``{"layers": [...], "kernels": [...]}`` as JSON.
``kernels`` are the weight matrices the ratios and the verdict compare, in
model order with the reference (the matrix that produces the model's
output) last, wherever it is in ``layers``: a language model's tied token
embedding is first there. A run that holds it is a tbgrad run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from tensorboard.compat.proto import summary_pb2

PLUGIN_NAME = "gradient_flow"
# The tag of the layer-order summary in a run's train/ folder.
LAYERS_TAG = "tbgrad/layers"
# Bumped when the content's format changes.
PROTO_VERSION = 1


def create_summary_metadata() -> summary_pb2.SummaryMetadata:
    """The metadata that marks the layer-order summary as this plugin's."""
    content = json.dumps({"version": PROTO_VERSION}).encode()
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME, content=content
        ),
        data_class=summary_pb2.DATA_CLASS_TENSOR,
    )


def layers_content(names: Sequence[str], kernels: Sequence[str] | None = None) -> bytes:
    """The tensor value of the layer-order summary for ``names``.

    ``kernels`` are the weight matrices among them that the verdict
    compares, in model order with the reference last; None means all of
    ``names``, the last one the reference.
    """
    content = {"layers": list(names)}
    if kernels is not None:
        content["kernels"] = list(kernels)
    return json.dumps(content).encode()


def parse_layers(value: bytes) -> list[str]:
    """The layer names of a layer-order summary's tensor value."""
    return list(json.loads(value.decode() if isinstance(value, bytes) else value)["layers"])


def parse_kernels(value: bytes) -> list[str] | None:
    """The compared matrices of a layer-order summary's value, the reference
    last; None if it lists none."""
    kernels = json.loads(value.decode() if isinstance(value, bytes) else value).get("kernels")
    return None if kernels is None else list(kernels)


def write_layers(writer, names: Sequence[str], kernels: Sequence[str] | None = None) -> None:
    """Writes the layer order ``names`` with the ``tf.summary`` ``writer`` at step 0."""
    import tensorflow as tf

    with writer.as_default(), tf.summary.record_if(True):
        tf.summary.write(
            tag=LAYERS_TAG,
            tensor=tf.constant(layers_content(names, kernels)),
            step=0,
            metadata=create_summary_metadata(),
        )
