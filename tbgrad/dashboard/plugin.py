"""The Gradient-flow dashboard: layers x epochs heatmaps of tbgrad's runs.

A dynamic TensorBoard plugin (the shape of TensorBoard's ``example_basic``):
the frontend is one ES module, ``static/index.js``, that TensorBoard loads
in an iframe from ``/data/plugin_entry.html?name=gradient_flow``; it asks
the routes below, relative to ``/data/plugin/gradient_flow/``. Everything is
read through ``context.data_provider``, so the plugin works with both
``--load_fast=false`` (the Python multiplexer) and ``--load_fast=true``
(the Rust data server).

Routes (all GET, all JSON except ``/index.js``):

``/runs``
    ``[{"run", "name", "layers", "layer_order", "reference", "epochs", "statistics",
    "verdict": {"label", "reason", "weakest_ratio", "strongest_ratio", "explanation"},
    "weakest_layer", "weakest_layer_ratio", "config"}, ...]`` sorted by name;
    ``[]`` when the log folder holds no tbgrad run. ``run`` is TensorBoard's
    run (``<run>/train``), ``name`` the run folder, ``layers`` the model order
    (input first), ``layer_order`` ``"summary"`` when it comes
    from the ``tbgrad/layers`` summary, ``"natural"`` when it is guessed
    from the tag names (natural sort, ``output`` last). ``reference`` is the
    matrix every ratio is relative to (:func:`reference_layer`: the one that
    produces the model's output, a language model's head; it need not be
    last in model order). ``weakest_layer`` is the compared matrix, not an
    embedding, with the smallest median ratio of mean |g| to the
    reference's (``null`` for a model of repeated blocks, whose verdict
    compares each kind of matrix along depth instead). ``config`` is the
    run folder's HParams as ``[[name, value], ...]`` in the order written
    (``[]`` without HParams): every field, where the HParams dashboard ticks
    only five. ``explanation`` is :meth:`tbgrad.verdict.Explanation.to_dict`:
    the rule, the layers and epochs concerned, the supporting signals and
    what to try, with the run's HParams (``act``, ``init``) when it has them.
``/heatmap?run=R&stat=S[&relative=1]``
    ``{"run", "name", "stat", "relative", "scale", "layers", "kinds",
    "blocks", "reference", "epochs", "values"}``: ``values[i][j]`` is the
    raw value (not its log) of ``S/<layers[i]>`` at step ``epochs[j]``,
    divided by the reference's value of the same epoch when ``relative``;
    ``null`` where the value is NaN, Inf or was not logged. ``scale`` is
    ``"log"`` or ``"linear"``, the colour scale the frontend uses. The rows
    are in display order (:func:`display_order`): model order, each repeated
    block's rows together, blocks in the order of their index, the reference
    last. ``kinds[i]`` is :func:`matrix_kind` of ``layers[i]`` (one of
    :data:`KINDS`), ``blocks[i]`` its block (:func:`block_names`; ``null``
    outside a repeated block, and for the reference).
``/heatmaps?run=R1&run=R2&stat=S[&relative=1]``
    ``{"stat", "relative", "scale", "runs": [heatmap, ...]}``: several runs
    in one request, with one ``scale`` for all (the shared colour scale).

Bad requests answer ``{"error": message}`` with status 400 (missing or
malformed parameter, unknown statistic) or 404 (unknown run).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tensorboard import errors, plugin_util
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import metadata as hparams_metadata
from werkzeug import wrappers

from tbgrad import statistics, tags, verdict
from tbgrad.blocks import block_structure
from tbgrad.dashboard import metadata

# The plugin that owns every scalar tbgrad and Keras write (tf.summary.scalar).
SCALARS_PLUGIN = "scalars"
# The plugin of tf.summary.text (the first_nonfinite tag).
TEXT_PLUGIN = "text"
# Ask for every point: the data providers keep at most --samples_per_plugin
# points per series anyway (1000 scalars by default, more than the 500
# epochs of the studies), and downsampling here would drop epochs.
DOWNSAMPLE = 1_000_000
STATIC_DIR = Path(__file__).resolve().parent / "static"

# From the statistics' descriptions (tbgrad.statistics.REGISTRY): the
# families the selector lists first, in registry order (families present in
# a run but not described follow, sorted); those coloured by log10 (positive
# magnitudes spanning decades) and linearly (signed values, already a log,
# counts that are mostly 0: no ratio to the output layer either); those
# the verdict's explanation reads besides grad_mean_abs and grad_nonfinite.
_FAMILIES = statistics.families()
PREFERRED_STATISTICS = tuple(f.name for f in _FAMILIES if f.scale and f.per_layer)
LOG_STATISTICS = tuple(f.name for f in _FAMILIES if f.scale == "log")
LINEAR_STATISTICS = tuple(f.name for f in _FAMILIES if f.scale == "linear")
EXPLANATION_FAMILIES = tuple(f.name for f in _FAMILIES if f.explains and f.per_layer)
RUN_EXPLANATION_TAGS = tuple(
    f.name for f in _FAMILIES if f.explains and not f.per_layer and f.kind == "scalar"
)
OUTPUT_LAYER = "output"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


class RequestError(Exception):
    """A bad request, answered as ``{"error": message}`` with ``code``."""

    def __init__(self, code: int, message: str):
        """Keeps ``code`` (400 or 404) and ``message`` for the JSON answer."""
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class RunInfo:
    """What the plugin knows about one tbgrad run before reading its values.

    Attributes:
        run: TensorBoard's name of the run's train folder (``<run>/train``).
        name: The run folder, relative to the log folder.
        layers: Tag names in model order, input first.
        layer_order: ``"summary"`` or ``"natural"`` (see the module docs).
        statistics: Per-layer scalar families present, in selector order.
        tags: Every scalar tag of the train folder.
        kernels: The weight matrices among ``layers`` that the verdict
            compares, in model order with the reference (the matrix that
            produces the model's output) last; None: all of ``layers``, the
            last one the reference.
    """

    run: str
    name: str
    layers: list[str]
    layer_order: str
    statistics: list[str] = field(default_factory=list)
    tags: frozenset[str] = frozenset()
    kernels: list[str] | None = None

    @property
    def compared(self) -> list[str]:
        """The matrices the verdict compares, reference last (see ``kernels``)."""
        if self.kernels is None:
            return list(self.layers)
        present = set(self.layers)
        return [name for name in self.kernels if name in present]

    @property
    def reference(self) -> str | None:
        """The reference: the matrix every ratio is relative to."""
        return reference_layer(self)

    @property
    def validation_run(self) -> str | None:
        """TensorBoard's name of the sibling validation folder, if there can be one."""
        if not is_train_run(self.run):
            return None
        return self.run[: -len(tags.TRAIN_DIR)] + tags.VALIDATION_DIR


def natural_key(name: str) -> tuple:
    """Sort key that puts ``hidden_2`` before ``hidden_10`` and ``output`` last."""
    parts = tuple(
        (0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in re.split(r"(\d+)", name)
    )
    return (name == OUTPUT_LAYER, parts)


def run_folder(run: str) -> str:
    """The run folder of TensorBoard's train run ``<folder>/train``."""
    if run == tags.TRAIN_DIR:
        return "."  # the log folder is the run folder itself
    return run[: -len(tags.TRAIN_DIR) - 1] if is_train_run(run) else run


def is_train_run(run: str) -> bool:
    """Whether TensorBoard's run ``run`` is a run's ``train`` folder."""
    return run == tags.TRAIN_DIR or run.endswith("/" + tags.TRAIN_DIR)


def per_layer_families(tag_names: Iterable[str], layers: Sequence[str]) -> list[str]:
    """The scalar families with a ``family/<layer>`` tag for some of ``layers``.

    Per-step families (``batch_*``) are left out: their steps are global
    steps, not epochs, so they do not fit the epoch axis.
    """
    wanted = set(layers)
    found = set()
    for tag in tag_names:
        family, _, layer = tag.partition("/")
        if layer in wanted and not family.startswith(tags.BATCH_PREFIX):
            found.add(family)
    known = [f for f in PREFERRED_STATISTICS if f in found]
    return known + sorted(found - set(known))


def finite_or_none(value) -> float | None:
    """``value`` as a float, or None when it is NaN, Inf or missing (JSON has neither)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def series_by_step(data: Sequence) -> dict[int, float]:
    """``{step: value}`` of a list of ``ScalarDatum``; the last write of a step wins.

    A resumed run can write a step twice; its newest value is the one the
    model went on from.
    """
    return {int(d.step): float(d.value) for d in data}


def value_matrix(info: RunInfo, stat: str, data: Mapping[str, Sequence]) -> tuple[list, np.ndarray]:
    """The epochs and the layers x epochs values of ``stat`` for one run.

    Args:
        info: The run.
        stat: A per-layer family, e.g. ``grad_mean_abs``.
        data: ``{tag: [ScalarDatum, ...]}`` of the run's train folder.

    Returns:
        ``(epochs, values)``: the sorted steps logged for any layer, and a
        float array with NaN where a layer has no value at that step.
    """
    rows = [series_by_step(data.get(tags.layer_tag(stat, layer), ())) for layer in info.layers]
    epochs = sorted(set().union(*rows)) if rows else []
    values = np.full((len(rows), len(epochs)), np.nan)
    column = {epoch: j for j, epoch in enumerate(epochs)}
    for i, row in enumerate(rows):
        for epoch, value in row.items():
            values[i, column[epoch]] = value
    return epochs, values


def heatmap(info: RunInfo, stat: str, relative: bool, data: Mapping[str, Sequence]) -> dict:
    """The ``/heatmap`` payload of one run, without the request-wide fields."""
    epochs, values = value_matrix(info, stat, data)
    reference = info.reference
    if relative and len(values):
        # x / 0 and 0 / 0 become null.
        row = info.layers.index(reference)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = values / values[row : row + 1, :]
    order, kinds, blocks = rows(info)
    return {
        "run": info.run,
        "name": info.name,
        "layers": [info.layers[i] for i in order],
        "kinds": kinds,
        "blocks": blocks,
        "reference": reference,
        "epochs": epochs,
        # tolist() turns the floats into Python's at C speed; NaN and Inf
        # become None after it, as JSON has neither.
        "values": [
            [v if math.isfinite(v) else None for v in row] for row in values[order].tolist()
        ],
    }


def reference_layer(info: RunInfo) -> str | None:
    """The reference row's name: the last of the compared matrices.

    The layer-order summary lists the compared matrices with the reference
    (the matrix that produces the model's output, found from the model's
    graph) last, wherever it is in model order: a language model's tied
    token embedding is first in model order. Without the summary, the last
    layer in natural order (``output`` sorts last). None without layers.
    """
    compared = info.compared
    if compared:
        return compared[-1]
    return info.layers[-1] if info.layers else None


# -- rows at scale: kinds, blocks, display order ---------------------------------

# The kinds of matrix the frontend filters by, in the order it lists them.
ATTENTION, FEED_FORWARD, EMBEDDING, HEAD, OTHER = KINDS = (
    "attention",
    "feed-forward",
    "embedding",
    "head",
    "other",
)
# Path components that name an attention projection (a LoRA factor's kind is
# its projection's: ``query/lora_kernel_a``) or a feed-forward kernel.
_ATTENTION_PART = re.compile(
    r"attention|attn|^(query|key|value|qkv|query_key_value|[qkvo]_proj|out_proj)$"
)
_FEED_FORWARD_PART = re.compile(
    r"feed_?forward|ffn|ffw|mlp|intermediate|output_dense|^(gate|up|down)_proj$|^fc_?[12]$"
)


def matrix_kind(name: str, reference: str | None = None) -> str:
    """The kind of the tracked matrix ``name``, one of :data:`KINDS`.

    ``"head"`` is the reference; ``"embedding"`` a name with a component
    that ends in ``embedding``/``embeddings`` (token, position and patch
    embeddings, an untied head's ``reverse_embeddings`` when it is not the
    reference); ``"attention"`` the query, key, value and output
    projections (and their LoRA factors); ``"feed-forward"`` a block's
    intermediate and output dense kernels, MLP and FFN kernels; the rest
    ``"other"`` (an MLP's hidden layers, convolutions, biases...).

    Example:
        >>> matrix_kind("transformer_layer_3/self_attention/query/lora_kernel_a")
        'attention'
    """
    if name == reference:
        return HEAD
    parts = name.lower().split("/")
    if any(re.search(r"embeddings?$|lora_embeddings_[ab]$", p) for p in parts):
        return EMBEDDING
    if any(_ATTENTION_PART.search(p) for p in parts):
        return ATTENTION
    if any(_FEED_FORWARD_PART.search(p) for p in parts):
        return FEED_FORWARD
    return OTHER


def block_names(names: Sequence[str], matrices: Sequence[str] | None = None) -> list[str | None]:
    """The repeated block each of ``names`` belongs to, or None.

    The blocks are those :func:`tbgrad.blocks.block_structure` reads from
    the weight ``matrices`` (default: ``names``), the verdict's own:
    ``transformer_layer_0`` .. ``transformer_layer_11``. A name under a
    block's path (a bias with ``variables="all"``) belongs to it; a name in
    several blocks to the outermost. An MLP's ``hidden_1`` .. ``hidden_5``
    form no block.

    Example:
        >>> block_names(["emb/embeddings", "b_0/query", "b_0/ffn", "b_1/query", "b_1/ffn"])
        [None, 'b_0', 'b_0', 'b_1', 'b_1']
    """
    structure = block_structure(list(names if matrices is None else matrices))
    if structure is None:
        return [None] * len(names)
    labels = sorted(set(structure.labels.values()), key=len)  # the outermost first
    return [next((b for b in labels if name.startswith(b + "/")), None) for name in names]


def display_order(
    names: Sequence[str],
    blocks: Sequence[str | None],
    reference: str | None,
    compared: Collection[str] = (),
) -> list[int]:
    """The rows' order: indices into ``names`` (in model order).

    Model order, but each repeated block's rows together and the blocks of
    one stem in the natural order of their index (``layer_2`` before
    ``layer_10``), placed where that stem first appears; the reference and
    its own variables that are not ``compared`` (``output/bias``) last, so
    the head row is at the bottom wherever the model holds it (a tied token
    embedding is first in model order).
    """
    tail = reference_rows(names, reference, compared)
    moved = set(tail)
    members: dict[str, list[int]] = {}
    for i, block in enumerate(blocks):
        if block is not None and i not in moved:
            members.setdefault(block, []).append(i)
    stems: dict[str, list[str]] = {}
    for block in members:
        stems.setdefault(block.rsplit("_", 1)[0], []).append(block)
    order, placed = [], set()
    for i, block in enumerate(blocks):
        if i in moved:
            continue
        if block is None:
            order.append(i)
            continue
        stem = block.rsplit("_", 1)[0]
        if stem not in placed:
            placed.add(stem)
            for b in sorted(stems[stem], key=natural_key):
                order.extend(members[b])
    return order + tail


def reference_rows(
    names: Sequence[str], reference: str | None, compared: Collection[str] = ()
) -> list[int]:
    """The rows of the reference and of its own variables that are not
    ``compared`` (``output/bias`` of the reference ``output``)."""
    if reference is None:
        return []
    compared = set(compared)
    own = reference + "/"
    return [
        i
        for i, name in enumerate(names)
        if name == reference or (name.startswith(own) and name not in compared)
    ]


def rows(info: RunInfo) -> tuple[list[int], list[str], list[str | None]]:
    """``(order, kinds, blocks)`` of a run's heatmap rows: :func:`display_order`
    of ``info.layers``, and each row's :func:`matrix_kind` and block (None for
    the reference and its own variables, shown apart at the bottom)."""
    reference, compared = info.reference, info.compared
    blocks = block_names(info.layers, compared)
    order = display_order(info.layers, blocks, reference, compared)
    kinds = [matrix_kind(info.layers[i], reference) for i in order]
    apart = set(reference_rows(info.layers, reference, compared))
    return order, kinds, [None if i in apart else blocks[i] for i in order]


def colour_scale(stat: str, maps: Iterable[dict]) -> str:
    """``"log"`` or ``"linear"``: how the frontend colours ``stat``.

    Known families have a fixed scale; a family tbgrad does not know is
    coloured by log10 when every finite value of ``maps`` is above 0.
    """
    if stat in LOG_STATISTICS:
        return "log"
    if stat in LINEAR_STATISTICS:
        return "linear"
    values = [v for m in maps for row in m["values"] for v in row if v is not None]
    return "log" if values and min(values) > 0 else "linear"


def weakest_layer(series: Mapping[str, Sequence[float]]) -> tuple[str | None, float | None]:
    """The compared matrix with the smallest median ratio of mean |g| to the reference's.

    Embeddings are left out while another matrix remains: an embedding's
    mean |g| is small by nature (a batch moves only its tokens' rows, and
    the mean runs over the whole vocabulary), so it would always be named.

    Args:
        series: ``{layer: grad_mean_abs per epoch}`` in model order, the
            reference last, every list over the same epochs.

    Returns:
        ``(layer, median ratio)``, or ``(None, None)`` with fewer than two
        layers or no epoch.
    """
    names = list(series)
    if len(names) < 2 or not len(series[names[0]]):
        return None, None
    g = np.array([series[n] for n in names], dtype=np.float64).T  # epochs x layers
    with np.errstate(divide="ignore", invalid="ignore"):
        # 0 / 0 (no gradient anywhere) counts as vanished, as in verdict.judge.
        quotients = np.nan_to_num(g[:, :-1] / g[:, -1:], nan=0.0)
    medians = np.median(quotients, axis=0)
    candidates = [i for i, n in enumerate(names[:-1]) if matrix_kind(n) != EMBEDDING]
    i = min(candidates or range(len(medians)), key=lambda k: medians[k])
    return names[i], finite_or_none(medians[i])


def run_summary(
    info: RunInfo,
    train: Mapping[str, Sequence],
    validation: Mapping,
    config: Mapping[str, object] | None = None,
    first_nonfinite: tuple[int, str] | None = None,
) -> dict:
    """The ``/runs`` entry of one run: its layers, statistics and verdict.

    Args:
        info: The run.
        train: ``{tag: [ScalarDatum, ...]}`` of its train folder, with at
            least the ``grad_mean_abs``, ``grad_nonfinite`` and loss tags,
            and the tags of :data:`EXPLANATION_FAMILIES` that were logged.
        validation: The same for its validation folder (may be empty).
        config: The run's HParams ``{name: value}``, for the suggestion.
        first_nonfinite: ``(epoch, text)`` of the run's ``first_nonfinite``
            tag, for the explanation of a non-finite verdict.
    """
    # The compared matrices, reference last, as verdict.judge wants them
    # (model order would put a tied token embedding, the head, first).
    gma = {
        layer: series_by_step(train.get(tags.layer_tag(tags.GRAD_MEAN_ABS, layer), ()))
        for layer in info.compared
    }
    gma = {layer: s for layer, s in gma.items() if s}
    # Epochs every layer has: a run read while it is written can hold the
    # newest epoch for some layers only, and judge() wants equal lengths.
    common = sorted(set.intersection(*(set(s) for s in gma.values()))) if gma else []
    series = {layer: [s[e] for e in common] for layer, s in gma.items()}
    found = _judge(info, series, train, validation)
    scalars = {tag: series_by_step(data) for tag, data in train.items()}
    explanation = verdict.explain_figures(found, series, common, scalars, config, first_nonfinite)
    # A model of repeated blocks has no single weakest layer to name: its
    # kinds of matrix differ by nature (a query gets far less than its
    # value), so the verdict compares each kind along depth and its
    # explanation names the blocks.
    blocked = any(block is not None for block in block_names(list(series)))
    layer, ratio = (None, None) if blocked else weakest_layer(series)
    return {
        "run": info.run,
        "name": info.name,
        "layers": list(info.layers),
        "layer_order": info.layer_order,
        "reference": info.reference,
        "epochs": len(common),
        "statistics": list(info.statistics),
        "verdict": {
            "label": found.label,
            "reason": found.reason,
            "weakest_ratio": finite_or_none(found.weakest_ratio),
            "strongest_ratio": finite_or_none(found.strongest_ratio),
            "explanation": explanation.to_dict(),
        },
        "weakest_layer": layer,
        "weakest_layer_ratio": ratio,
    }


def _judge(info: RunInfo, series: dict, train: Mapping, validation: Mapping) -> verdict.Verdict:
    """:func:`tbgrad.verdict.judge` of the kernels' ``series`` and the run's
    losses and non-finite counts; ``unknown`` when the figures do not fit."""
    loss = tags.epoch_tag("loss")
    losses = [d.value for split in (train, validation) for d in split.get(loss, ())]
    nonfinite = float(
        np.nansum(
            [
                d.value
                for layer in info.layers
                for d in train.get(tags.layer_tag(tags.GRAD_NONFINITE, layer), ())
            ]
        )
    )
    try:
        return verdict.judge(series, losses, nonfinite)
    except ValueError as e:
        return verdict.Verdict(verdict.UNKNOWN, None, None, str(e))


def run_config(contents: Mapping[str, bytes]) -> list[list]:
    """``[[name, value], ...]`` of a run folder's HParams summaries.

    Args:
        contents: ``{tag: plugin content}`` of the folder's ``hparams``
            summaries: the session start info (the values) and, when present,
            the experiment (the columns, in the order they were written).

    Unreadable summaries give ``[]``; names the experiment lacks follow,
    sorted.
    """
    try:
        start = hparams_metadata.parse_session_start_info_plugin_data(
            contents[hparams_metadata.SESSION_START_INFO_TAG]
        )
        written = contents.get(hparams_metadata.EXPERIMENT_TAG)
        experiment = written and hparams_metadata.parse_experiment_plugin_data(written)
    except (KeyError, ValueError, TypeError, AttributeError):
        return []
    order = [info.name for info in experiment.hparam_infos] if experiment else []
    names = [n for n in order if n in start.hparams]
    names += sorted(set(start.hparams) - set(names))
    return [[name, plain_value(start.hparams[name])] for name in names]


def plain_value(value) -> str | float | bool | None:
    """A ``google.protobuf.Value`` of HParams as a JSON value (None if not a scalar)."""
    kind = value.WhichOneof("kind")
    return getattr(value, kind) if kind in ("string_value", "number_value", "bool_value") else None


def parse_relative(value: str | None) -> bool:
    """The ``relative`` query parameter as a bool; RequestError when malformed."""
    word = (value or "").strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise RequestError(400, f"relative must be 1 or 0 (true or false). Received: {value!r}")


def json_response(request, payload, code: int = 200):
    """``payload`` as JSON; NaN and Inf must have become None before (JSON has neither)."""
    body = json.dumps(payload, allow_nan=False)
    return http_util.Respond(request, body, "application/json", code=code)


class GradientFlowPlugin(base_plugin.TBPlugin):
    """TensorBoard's "Gradient flow" tab: per-layer statistics as heatmaps.

    Args:
        context: TensorBoard's ``TBContext``; only its ``data_provider`` is read.
    """

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext):
        """Keeps the data provider; the plugin reads nothing else."""
        self._provider = context.data_provider

    def is_active(self) -> bool:
        """Always False: TensorBoard activates the tab from data_plugin_names()."""
        # Activity comes from data_plugin_names(): TensorBoard enables the tab
        # when the data provider lists one of those plugins in the log folder.
        return False

    def data_plugin_names(self) -> tuple[str, ...]:
        """The plugins whose data, present in the log folder, enables the tab."""
        # Our own layer-order summary marks a tbgrad run; "scalars" also shows
        # the tab for runs logged before that summary existed (the page then
        # lists them, or says that the folder holds no tbgrad run).
        return (metadata.PLUGIN_NAME, SCALARS_PLUGIN)

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        """An iframed ES module, ``/index.js``, under the tab "Gradient flow"."""
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="Gradient flow")

    def get_plugin_apps(self) -> dict:
        """The routes, under ``/data/plugin/gradient_flow``."""
        return {
            "/index.js": self._serve_index_js,
            "/runs": self._json_route(self._runs),
            "/heatmap": self._json_route(self._heatmap),
            "/heatmaps": self._json_route(self._heatmaps),
        }

    @wrappers.Request.application
    def _serve_index_js(self, request):
        """The frontend, read on each request so that an edit shows on reload."""
        contents = (STATIC_DIR / "index.js").read_text(encoding="utf-8")
        return http_util.Respond(request, contents, "text/javascript")

    def _json_route(self, handler):
        """A WSGI app that answers ``handler(ctx, experiment_id, args)`` as JSON."""

        @wrappers.Request.application
        def app(request):
            """The WSGI app of one JSON route."""
            ctx = plugin_util.context(request.environ)
            eid = plugin_util.experiment_id(request.environ)
            try:
                return json_response(request, handler(ctx, eid, request.args))
            except RequestError as e:
                return json_response(request, {"error": e.message}, e.code)
            except errors.PublicError as e:  # e.g. an unknown experiment
                return json_response(request, {"error": str(e)}, e.http_code)

        return app

    # -- reading ------------------------------------------------------------

    def _layer_orders(self, ctx, eid: str) -> dict[str, tuple[list[str], list[str] | None]]:
        """``{run: (layers, kernels)}`` of every run with a readable ``tbgrad/layers``
        summary."""
        only_layers = provider.RunTagFilter(tags=[metadata.LAYERS_TAG])
        listing = self._provider.list_tensors(
            ctx, experiment_id=eid, plugin_name=metadata.PLUGIN_NAME, run_tag_filter=only_layers
        )
        runs = [run for run, by_tag in listing.items() if metadata.LAYERS_TAG in by_tag]
        if not runs:
            return {}
        data = self._provider.read_tensors(
            ctx,
            experiment_id=eid,
            plugin_name=metadata.PLUGIN_NAME,
            downsample=DOWNSAMPLE,
            run_tag_filter=provider.RunTagFilter(runs=runs, tags=[metadata.LAYERS_TAG]),
        )
        orders = {}
        for run, by_tag in data.items():
            written = by_tag.get(metadata.LAYERS_TAG)
            if not written:
                continue
            try:
                # The newest write wins: a resumed run writes it again.
                value = written[-1].numpy.item()
                layers, kernels = metadata.parse_layers(value), metadata.parse_kernels(value)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # malformed: fall back to the tag names' order
            if layers and all(isinstance(name, str) for name in layers):
                orders[run] = (layers, kernels)
        return orders

    def _discover(self, ctx, eid: str) -> dict[str, RunInfo]:
        """``{run: RunInfo}`` of every tbgrad run, from the listings only."""
        if self._provider is None:
            return {}
        scalars = self._provider.list_scalars(ctx, experiment_id=eid, plugin_name=SCALARS_PLUGIN)
        orders = self._layer_orders(ctx, eid)
        prefix = tags.GRAD_MEAN_ABS + "/"
        infos = {}
        for run in sorted(set(scalars) | set(orders)):
            run_tags = frozenset(scalars.get(run, {}))
            kernels = None
            if run in orders:
                (layers, kernels), order = orders[run], "summary"
            else:
                names = {t[len(prefix) :] for t in run_tags if t.startswith(prefix)}
                layers, order = sorted(names, key=natural_key), "natural"
            if not layers:
                continue  # not a tbgrad run (e.g. a validation folder)
            name = run_folder(run)
            statistics = per_layer_families(run_tags, layers)
            infos[run] = RunInfo(run, name, layers, order, statistics, run_tags, kernels)
        return infos

    def _read(self, ctx, eid: str, runs: Iterable[str], tag_names: Iterable[str]) -> dict:
        """``{run: {tag: [ScalarDatum, ...]}}`` of the given runs and tags."""
        runs, tag_names = sorted(set(runs)), sorted(set(tag_names))
        if not runs or not tag_names:
            return {}
        return self._provider.read_scalars(
            ctx,
            experiment_id=eid,
            plugin_name=SCALARS_PLUGIN,
            downsample=DOWNSAMPLE,
            run_tag_filter=provider.RunTagFilter(runs=runs, tags=tag_names),
        )

    # -- routes -------------------------------------------------------------

    def _runs(self, ctx, eid: str, args) -> list[dict]:
        """``/runs``: every tbgrad run with its layers, statistics and verdict."""
        del args  # /runs takes no parameter
        infos = self._discover(ctx, eid)
        wanted = {tags.epoch_tag("loss"), *RUN_EXPLANATION_TAGS}
        for info in infos.values():
            for family in (tags.GRAD_MEAN_ABS, tags.GRAD_NONFINITE, *EXPLANATION_FAMILIES):
                wanted.update(tags.layer_tag(family, layer) for layer in info.layers)
        runs = [info.run for info in infos.values()]
        runs += [info.validation_run for info in infos.values() if info.validation_run]
        data = self._read(ctx, eid, runs, wanted)
        configs = self._configs(ctx, eid, [info.name for info in infos.values()])
        nonfinite = self._first_nonfinite(ctx, eid, [info.run for info in infos.values()])
        out = []
        for info in infos.values():
            config = configs.get(info.name, [])
            train, validation = data.get(info.run, {}), data.get(info.validation_run, {})
            first = nonfinite.get(info.run)
            summary = run_summary(info, train, validation, dict(config), first)
            out.append(summary | {"config": config})
        return sorted(out, key=lambda entry: natural_key(entry["name"]))

    def _first_nonfinite(self, ctx, eid: str, runs: Sequence[str]) -> dict[str, tuple]:
        """``{run: (epoch, text)}`` of the runs' first ``first_nonfinite`` text tag,
        as :attr:`tbgrad.eventlog.SplitData.first_nonfinite` reads it."""
        only = provider.RunTagFilter(runs=list(runs), tags=[tags.FIRST_NONFINITE])
        data = self._provider.read_tensors(
            ctx,
            experiment_id=eid,
            plugin_name=TEXT_PLUGIN,
            downsample=DOWNSAMPLE,
            run_tag_filter=only,
        )
        out = {}
        for run, by_tag in data.items():
            written = by_tag.get(tags.FIRST_NONFINITE)
            if written:
                first = min(written, key=lambda d: d.step)  # the run's first wins
                text = first.numpy.item()
                out[run] = (int(first.step), text.decode() if isinstance(text, bytes) else text)
        return out

    def _configs(self, ctx, eid: str, folders: Sequence[str]) -> dict[str, list[list]]:
        """``{run folder: run_config(...)}`` of the folders holding HParams."""
        if not folders:
            return {}
        listing = self._provider.list_tensors(
            ctx,
            experiment_id=eid,
            plugin_name=hparams_metadata.PLUGIN_NAME,
            run_tag_filter=provider.RunTagFilter(runs=sorted(set(folders))),
        )
        return {
            run: run_config({tag: series.plugin_content for tag, series in by_tag.items()})
            for run, by_tag in listing.items()
        }

    def _resolve(self, infos: Mapping[str, RunInfo], asked: Sequence[str]) -> list[RunInfo]:
        """The runs named by ``run=`` (TensorBoard's name or the folder); RequestError if not."""
        by_name = {**{i.name: i for i in infos.values()}, **infos}
        found = []
        for run in dict.fromkeys(asked):  # in order, once each
            if run not in by_name:
                known = ", ".join(sorted(i.name for i in infos.values())[:20]) or "none"
                raise RequestError(404, f"unknown run {run!r}; tbgrad runs here: {known}")
            found.append(by_name[run])
        return found

    def _heatmaps(self, ctx, eid: str, args) -> dict:
        """``/heatmaps``: the values of ``stat`` for each ``run=``, on one colour scale."""
        asked = [r for r in args.getlist("run") if r]
        if not asked:
            raise RequestError(400, "missing parameter run (a run name from /runs)")
        stat = args.get("stat")
        if not stat:
            raise RequestError(400, "missing parameter stat (e.g. stat=grad_mean_abs)")
        relative = parse_relative(args.get("relative"))
        infos = self._resolve(self._discover(ctx, eid), asked)
        for info in infos:
            if stat not in info.statistics:
                available = ", ".join(info.statistics) or "none"
                raise RequestError(
                    400, f"unknown statistic {stat!r} for run {info.name!r}; available: {available}"
                )
        if relative and stat in LINEAR_STATISTICS:
            raise RequestError(
                400, f"relative=1 needs a positive statistic; {stat} is coloured linearly"
            )
        wanted = [tags.layer_tag(stat, layer) for info in infos for layer in info.layers]
        data = self._read(ctx, eid, [info.run for info in infos], wanted)
        maps = [heatmap(info, stat, relative, data.get(info.run, {})) for info in infos]
        return {"stat": stat, "relative": relative, "scale": colour_scale(stat, maps), "runs": maps}

    def _heatmap(self, ctx, eid: str, args) -> dict:
        """``/heatmap``: the values of ``stat`` for one run."""
        asked = [r for r in args.getlist("run") if r]
        if len(asked) > 1:
            raise RequestError(400, "/heatmap takes one run; ask /heatmaps for several")
        both = self._heatmaps(ctx, eid, args)
        return {key: both[key] for key in ("stat", "relative", "scale")} | both["runs"][0]
