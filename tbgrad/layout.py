"""The gradient-flow layout of TensorBoard's Custom Scalars dashboard.

TensorBoard's Scalars dashboard draws one chart per tag, so a run's layers
sit in separate charts. :func:`gradient_flow_layout` describes, with
``tensorboard.plugins.custom_scalar``, one multi-line chart holding every
layer's ``grad_mean_abs`` (the vanishing pattern in one picture), one with
every layer's ``grad_std`` and one with ``grad_ratio``.

The charts select tags by regular expression, not by layer name, so every
run writes the same layout: TensorBoard merges the layouts of all runs and
drops duplicate charts (``custom_scalars_plugin.py``, ``layout_impl``), and
runs of different depths still share one chart per family.
"""

from __future__ import annotations

import tensorflow as tf
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata

from tbgrad import tags

CATEGORY = "gradient flow"
# TensorBoard's fixed tag of a layout summary, in the run's train/ folder.
LAYOUT_TAG = layout_metadata.CONFIG_SUMMARY_TAG

# (chart title, tag regex); regexes as TensorBoard applies them (re.search).
CHARTS = (
    (f"{tags.GRAD_MEAN_ABS}: every layer", rf"^{tags.GRAD_MEAN_ABS}/"),
    (f"{tags.GRAD_STD}: every layer", rf"^{tags.GRAD_STD}/"),
    (tags.GRAD_RATIO, rf"^{tags.GRAD_RATIO}$"),
)


def gradient_flow_layout() -> layout_pb2.Layout:
    """Returns the Custom Scalars layout proto of tbgrad's gradient charts."""
    charts = [
        layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=[regex]))
        for title, regex in CHARTS
    ]
    return layout_pb2.Layout(category=[layout_pb2.Category(title=CATEGORY, chart=charts)])


def write_layout(writer: tf.summary.SummaryWriter) -> None:
    """Writes :func:`gradient_flow_layout` with ``writer`` at step 0.

    Call it eagerly; :class:`tbgrad.SummaryLogger` does when it creates a
    run's ``train/`` writer, so both training paths write it.
    """
    with writer.as_default(), tf.summary.record_if(True):
        tf.summary.write(
            tag=LAYOUT_TAG,
            tensor=tf.constant(gradient_flow_layout().SerializeToString(), dtype=tf.string),
            step=0,
            metadata=layout_metadata.create_summary_metadata(),
        )
