"""The gradient-flow layout of TensorBoard's Custom Scalars dashboard.

:func:`gradient_flow_layout` describes, with
``tensorboard.plugins.custom_scalar``, one chart per layer, in model order,
of the layer's ``grad_log10_ratio``: log10 of its mean |g| divided by the
output layer's. Each chart holds one line per run, in the run's colour, so
that A2 beside A3 reads layer by layer without hovering: 0 is as strong as
the output layer, -1 ten times weaker, and a vanishing layer sits far below
the others on an axis in decades. (One chart holding every layer would draw
all of a run's layers in the run's one colour, with no legend, and a linear
axis of raw mean |g| squeezes the weak layers onto 0.)

Each run writes the charts of its own layers. TensorBoard merges the layouts
of all runs (``custom_scalars_plugin.py``, ``layout_impl``): categories with
the same title become one, and a chart identical to one already there (same
title, same tag) is dropped, so runs sharing layer names share charts, and a
deeper run adds charts for the layers the others lack.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import tensorflow as tf
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata

from tbgrad import tags

CATEGORY = "gradient flow: log10(layer's mean |g| / output layer's), 0 = as strong, -1 = 10x weaker"
# Below the per-layer charts: every layer in one chart, for runs to compare
# the shape of the profile, and grad_ratio.
OVERVIEW_CATEGORY = "gradient flow: every layer in one chart"
# TensorBoard's fixed tag of a layout summary, in the run's train/ folder.
LAYOUT_TAG = layout_metadata.CONFIG_SUMMARY_TAG

# (chart title, tag regex) of the overview; regexes as TensorBoard applies
# them (re.search).
OVERVIEW_CHARTS = (
    (f"{tags.GRAD_LOG10_RATIO}: every layer", rf"^{tags.GRAD_LOG10_RATIO}/"),
    (tags.GRAD_RATIO, rf"^{tags.GRAD_RATIO}$"),
)


def layer_chart(layer: str) -> layout_pb2.Chart:
    """The chart of ``layer``'s ``grad_log10_ratio``, titled with the layer's name."""
    regex = f"^{re.escape(tags.layer_tag(tags.GRAD_LOG10_RATIO, layer))}$"
    return layout_pb2.Chart(title=layer, multiline=layout_pb2.MultilineChartContent(tag=[regex]))


def gradient_flow_layout(layers: Sequence[str]) -> layout_pb2.Layout:
    """Returns the Custom Scalars layout of tbgrad's gradient charts.

    Args:
        layers: The layers compared with the output layer, in model order
            (input first), e.g. :attr:`tbgrad.collector.Collector.compared_names`.
    """
    if isinstance(layers, str):
        raise TypeError(f"layers must be a sequence of layer names. Received: {layers!r}")
    overview = [
        layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=[regex]))
        for title, regex in OVERVIEW_CHARTS
    ]
    return layout_pb2.Layout(
        category=[
            layout_pb2.Category(title=CATEGORY, chart=[layer_chart(name) for name in layers]),
            layout_pb2.Category(title=OVERVIEW_CATEGORY, chart=overview, closed=True),
        ]
    )


def write_layout(writer: tf.summary.SummaryWriter, layers: Sequence[str]) -> None:
    """Writes :func:`gradient_flow_layout` of ``layers`` with ``writer`` at step 0.

    Call it eagerly; :class:`tbgrad.summary.SummaryLogger` does when it creates a
    run's ``train/`` writer, so both training paths write it.
    """
    with writer.as_default(), tf.summary.record_if(True):
        tf.summary.write(
            tag=LAYOUT_TAG,
            tensor=tf.constant(gradient_flow_layout(layers).SerializeToString(), dtype=tf.string),
            step=0,
            metadata=layout_metadata.create_summary_metadata(),
        )
