"""Every private Keras or TensorFlow part tbgrad reaches, in one place.

Each function names the private part it uses and why no public API serves;
tests/library/test_compat.py calls each one on the installed release and
fails with the part's name when a release removes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import tensorflow as tf

# Every Keras 3 optimizer's ``apply()`` ends in this method, after loss-scale
# unscaling, gradient clipping and gradient accumulation: its arguments are
# the gradients that move the weights. No public hook exists for them
# (``keras.optimizers.Optimizer`` offers none between those steps and the
# update).
OPTIMIZER_UPDATE_STEP = "_backend_update_step"


def has_update_step(optimizer) -> bool:
    """Whether ``optimizer`` has the update step :func:`wrap_update_step` wraps."""
    return callable(getattr(optimizer, OPTIMIZER_UPDATE_STEP, None))


def wrap_update_step(
    optimizer,
    before: Callable[[list, list], None],
    after: Callable[[], None] | None = None,
) -> None:
    """Makes ``optimizer`` call ``before(grads, variables)`` ahead of each update
    and ``after()`` (if given) once the update has moved the weights.

    An instance attribute shadows the class's method for this one optimizer
    (not its class); :func:`unwrap_update_step` removes it.
    """
    original = getattr(optimizer, OPTIMIZER_UPDATE_STEP)

    def update_step(grads, trainable_variables, learning_rate):
        grads = list(grads)
        trainable_variables = list(trainable_variables)
        before(grads, trainable_variables)
        result = original(grads, trainable_variables, learning_rate)
        if after is not None:
            after()
        return result

    setattr(optimizer, OPTIMIZER_UPDATE_STEP, update_step)


def unwrap_update_step(optimizer) -> None:
    """Undoes :func:`wrap_update_step`; the class's method shows through again."""
    optimizer.__dict__.pop(OPTIMIZER_UPDATE_STEP, None)


def is_update_step_wrapped(optimizer) -> bool:
    """Whether :func:`wrap_update_step` is in force on ``optimizer``."""
    return OPTIMIZER_UPDATE_STEP in vars(optimizer)


# Every Keras 3 optimizer's ``apply()`` (``_backend_apply_gradients``) calls
# this method on the unscaled (and, with gradient accumulation, averaged)
# gradients, then applies weight decay and reaches the update step: it is the
# first point of a step that sees the gradients before clipping, and the last
# one before the weights move (keras/src/optimizers/base_optimizer.py). No
# public API exposes the gradients before clipping.
OPTIMIZER_CLIP_GRADIENTS = "_clip_gradients"


# On JAX, fit's train step is a pure function of the state it is handed:
# Keras carries from step to step only the variables it passes in and out,
# the optimizer's among them (``BaseOptimizer.stateless_apply`` returns every
# one of ``optimizer.variables``; keras/src/backend/jax/trainer.py). The
# statistics' state updated inside the update step persists only as the
# optimizer's variables: it is appended to the optimizer's tracked list
# (``_variables``, where ``add_variable`` puts a new one) before fit reads
# the state, and removed when tbgrad detaches. Fit writes the state back
# into the variables (``jax_state_sync``) before every ``on_epoch_end``; to
# read or reset it mid-epoch, a callback syncs it and asks fit to read the
# variables again (``_jax_state_synced``).
OPTIMIZER_VARIABLES = "_variables"
JAX_STATE_SYNCED = "_jax_state_synced"


# What is saved stays Keras's alone: while tbgrad's state is tracked, the
# object's public ``save_own_variables`` (what every Keras save calls) is
# shadowed on the instance to save without it.
SAVE_OWN_VARIABLES = "save_own_variables"


def _save_without(owner, attribute: str, variables) -> None:
    ids = {id(v) for v in variables}
    original = type(owner).save_own_variables

    def save_own_variables(store):
        tracked = getattr(owner, attribute)
        kept = list(tracked)
        _remove(tracked, ids)
        try:
            original(owner, store)
        finally:
            _remove(tracked, {id(v) for v in kept})
            tracked.extend(kept)  # as it was, in its order

    setattr(owner, SAVE_OWN_VARIABLES, save_own_variables)


def _remove(tracked, ids) -> None:
    for i in reversed(range(len(tracked))):
        if id(tracked[i]) in ids:
            del tracked[i]


def track_in_optimizer(optimizer, variables) -> None:
    """Makes ``variables`` part of ``optimizer``'s state (JAX)."""
    _track(optimizer, OPTIMIZER_VARIABLES, variables)


def untrack_from_optimizer(optimizer, variables) -> None:
    """Undoes :func:`track_in_optimizer`."""
    _untrack(optimizer, OPTIMIZER_VARIABLES, variables)


def _track(owner, attribute: str, variables) -> None:
    if not variables:
        return
    tracked = getattr(owner, attribute)
    known = {id(v) for v in tracked}
    tracked.extend(v for v in variables if id(v) not in known)
    _save_without(owner, attribute, variables)


def _untrack(owner, attribute: str, variables) -> None:
    _remove(getattr(owner, attribute), {id(v) for v in variables})
    owner.__dict__.pop(SAVE_OWN_VARIABLES, None)


# Likewise the model carries its non-trainable variables through the
# forward pass (``stateless_call``): the activation statistics' state,
# updated there, is appended to the model's own list
# (``Layer._non_trainable_variables``, which ``model.non_trainable_variables``
# reads) and removed when tbgrad detaches.
MODEL_NON_TRAINABLE = "_non_trainable_variables"


def track_in_model(model, variables) -> None:
    """Makes ``variables`` part of ``model``'s non-trainable state (JAX)."""
    _track(model, MODEL_NON_TRAINABLE, variables)


def untrack_from_model(model, variables) -> None:
    """Undoes :func:`track_in_model`."""
    _untrack(model, MODEL_NON_TRAINABLE, variables)


def sync_training_state(model) -> None:
    """On JAX inside ``fit``: writes the running state into the variables and
    makes fit read them back at its next step (they may be reset)."""
    if getattr(model, "_jax_state", None) is not None and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()
        setattr(model, JAX_STATE_SYNCED, True)


def has_clip_gradients(optimizer) -> bool:
    """Whether ``optimizer`` has the method :func:`wrap_clip_gradients` wraps."""
    return callable(getattr(optimizer, OPTIMIZER_CLIP_GRADIENTS, None))


def wrap_clip_gradients(optimizer, seen: Callable[[list, list], None]) -> None:
    """Makes ``optimizer`` call ``seen(unclipped, clipped)`` in each update,
    before weight decay and the update step move the weights.

    Like :func:`wrap_update_step`, on this one instance; undone by
    :func:`unwrap_clip_gradients`.
    """
    original = getattr(optimizer, OPTIMIZER_CLIP_GRADIENTS)

    def clip_gradients(grads):
        grads = list(grads)
        clipped = list(original(grads))
        seen(grads, clipped)
        return clipped

    setattr(optimizer, OPTIMIZER_CLIP_GRADIENTS, clip_gradients)


def unwrap_clip_gradients(optimizer) -> None:
    """Undoes :func:`wrap_clip_gradients`."""
    optimizer.__dict__.pop(OPTIMIZER_CLIP_GRADIENTS, None)


# A Keras 3 LossScaleOptimizer calls this method instead of its inner
# optimizer's ``apply`` on a step whose loss-scaled gradients are not finite:
# the step is skipped, so the inner update step (and the hook on it) never
# runs (keras/src/optimizers/loss_scale_optimizer.py, ``_common_apply`` and
# ``_tf_apply``). No public API tells a skipped step from an applied one.
LOSS_SCALE_SKIP_STEP = "_stateful_handle_non_finite_grads"


def has_skip_step(optimizer) -> bool:
    """Whether ``optimizer`` skips steps through :data:`LOSS_SCALE_SKIP_STEP`."""
    return callable(getattr(optimizer, LOSS_SCALE_SKIP_STEP, None))


def wrap_skip_step(optimizer, on_skip: Callable[[], None]) -> None:
    """Makes ``optimizer`` call ``on_skip()`` in every step it skips.

    Like :func:`wrap_update_step`, on this one instance; undone by
    :func:`unwrap_skip_step`.
    """
    original = getattr(optimizer, LOSS_SCALE_SKIP_STEP)

    def skip_step(*args, **kwargs):
        on_skip()
        return original(*args, **kwargs)

    setattr(optimizer, LOSS_SCALE_SKIP_STEP, skip_step)


def unwrap_skip_step(optimizer) -> None:
    """Undoes :func:`wrap_skip_step`."""
    optimizer.__dict__.pop(LOSS_SCALE_SKIP_STEP, None)


# The private parts of ``keras.callbacks.TensorBoard`` that tbgrad.TensorBoard
# overrides or calls (keras/src/callbacks/tensorboard.py): the weight
# histograms it writes its own way (``_log_weights``), the Projector config
# it writes into a folder it creates first, the default writer and profile
# trace it undoes after an exception, the writers it shares with
# tbgrad's own, the model summary and train graph it writes at the end of
# the first epoch instead of in ``set_model``, the per-epoch steps per
# second, weight images and embeddings it keeps, and the flags that say
# whether the batch hooks have work to do.
KERAS_TENSORBOARD_METHODS = (
    "_log_weights",
    "_configure_embeddings",
    "_pop_writer",
    "_stop_trace",
    "_log_weight_as_image",
    "_log_embeddings",
    "_write_keras_model_summary",
    "_write_keras_model_train_graph",
    "_compute_steps_per_second",
    "_train_writer",
    "_val_writer",
)
KERAS_TENSORBOARD_ATTRIBUTES = (
    "_should_trace",
    "_should_write_train_graph",
    "_is_tracing",
    "_prev_summary_state",
)


# Keras's fit has no ``finally``: an exception out of it (user code in a
# callback or a data generator, KeyboardInterrupt) skips ``on_train_end``,
# so a callback cannot undo itself there. Every fit and ``train_on_batch``
# first calls the model's public ``make_train_function``; shadowing it on
# the one model instance runs ``undo`` before the next one is made.
NEXT_TRAIN_FUNCTION = "make_train_function"


def before_next_train_function(model, undo: Callable[[], None]) -> None:
    """Runs ``undo()`` when ``model`` next makes its train function for a new
    ``fit`` (a call without ``force``; a retrace with ``force=True`` inside a
    running fit is let through), unless :func:`forget_next_train_function`
    is called first. A second call adds its ``undo`` to the first's."""
    current = model.__dict__.get(NEXT_TRAIN_FUNCTION)
    undos = [*getattr(current, "undos", ()), undo]

    def make_train_function(force=False):
        if force:
            return type(model).make_train_function(model, force=True)
        forget_next_train_function(model)
        for step in undos:
            step()
        return model.make_train_function(force=True)

    make_train_function.undos = undos
    object.__setattr__(model, NEXT_TRAIN_FUNCTION, make_train_function)


def forget_next_train_function(model) -> None:
    """Undoes :func:`before_next_train_function`."""
    model.__dict__.pop(NEXT_TRAIN_FUNCTION, None)


def sublayers(layer) -> Iterator:
    """The layers ``layer`` tracks directly, in the order it tracks them.

    ``layer._layers`` holds a subclassed model's or a custom layer's
    sub-layers (Keras's own ``_flatten_layers`` walks it); the public
    ``layers`` property exists on models only.
    """
    yield from getattr(layer, "_layers", None) or getattr(layer, "layers", None) or []


# A functional model's graph: each symbolic tensor records the operation and
# call (node) that produced it (``KerasTensor._keras_history``,
# ``Operation._inbound_nodes``, keras/src/ops/node.py); a Sequential model
# keeps the functional model it builds in ``_functional``. Keras walks the
# same records to run a functional model; no public API exposes them.
def symbolic_outputs(model) -> list:
    """A functional model's (or an input-built Sequential's) symbolic
    outputs; [] for a subclassed model."""
    model = getattr(model, "_functional", None) or model
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return []
    return [t for t in tf.nest.flatten(outputs or []) if hasattr(t, "_keras_history")]


def producer(tensor):
    """``(operation, its input tensors)`` that produced symbolic ``tensor``
    (an input's ``InputLayer`` has none), or None when no record says."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    nodes = getattr(history.operation, "_inbound_nodes", [])
    if history.node_index >= len(nodes):
        return None
    return history.operation, list(nodes[history.node_index].input_tensors)


def all_layers_built(model) -> bool:
    """Whether every layer of ``model``, nested ones included, is built.

    ``Layer._flatten_layers`` is what Keras itself uses for this walk.
    """
    return all(layer.built for layer in model._flatten_layers())


def write_raw_summary(writer: tf.summary.SummaryWriter, step: int, data: tf.Tensor) -> bool:
    """Writes a serialized ``Summary`` with ``writer`` without a flush.

    ``tf.summary.experimental.write_raw_pb`` needs ``writer.as_default()``,
    whose exit flushes (an fsync of the event file) every call; the op it
    runs, ``write_raw_proto_summary`` on the writer's ``_resource``, does
    not. Returns False when the writer has no such resource (then the caller
    writes through the public API).
    """
    from tensorflow.python.ops import gen_summary_ops

    resource = getattr(writer, "_resource", None)
    if resource is None:
        return False
    gen_summary_ops.write_raw_proto_summary(resource, tf.constant(step, tf.int64), data)
    return True


def op_determinism_enabled() -> bool:
    """Whether ``tf.config.experimental.enable_op_determinism`` is in force.

    TensorFlow exposes the setter but not the getter publicly.
    """
    from tensorflow.python.framework.config import is_op_determinism_enabled

    return is_op_determinism_enabled()


def functional_cond(pred, true_fn: Callable, false_fn: Callable):
    """``tf.cond(pred, true_fn, false_fn)`` kept as one functional ``If`` op.

    Inside a ``tf.function``, ``tf.cond`` is lowered to Switch and Merge ops,
    and TensorFlow's executor runs every op of a graph holding those through
    its control-flow bookkeeping: in a train step that costs more than the
    rarely taken branch saves. ``cond_v2.indexed_case`` with
    ``lower_using_switch_merge=False`` keeps the ``If`` op (its branches run
    as function calls); no public API does. Eagerly, a branch is just called.
    """
    if tf.executing_eagerly():
        return true_fn() if bool(pred) else false_fn()
    from tensorflow.python.ops import cond_v2

    index = tf.cast(pred, tf.int32)
    return cond_v2.indexed_case(index, [false_fn, true_fn], lower_using_switch_merge=False)


# Keras 3 keeps the ``training`` argument of the outermost layer call in a
# call context (``Layer._get_call_context``, keras/src/layers/layer.py), the
# one every nested layer inherits it from. An activation function is called
# without it; no public API says whether the forward pass running is a
# training one.
KERAS_CALL_CONTEXT = "current_call_ctx"


def keras_training() -> bool:
    """Whether the Keras layer call being traced runs with ``training=True``."""
    from keras.src.backend.common import global_state

    context = global_state.get_global_attribute(KERAS_CALL_CONTEXT)
    return bool(context is not None and context.get_value("training"))


# A Keras layer with an activation (Dense, Conv*, ...) applies it as
# ``self.activation(x)`` in ``call``. tbgrad shadows that attribute on the
# one layer instance with a wrapper that sees the layer's output in the
# training forward pass; the wrapper keeps the original's name and module
# (functools.wraps), so the layer's config serialises unchanged.
WRAPPED_ACTIVATION = "_tbgrad_original_activation"


def wrap_activation(layer, seen: Callable) -> bool:
    """Makes ``layer.activation`` call ``seen(output)`` on every output it
    computes. A layer wrapped already (by another logger, or one a failed
    ``fit`` left behind) is wrapped anew for ``seen`` alone."""
    import functools

    original = getattr(layer.activation, WRAPPED_ACTIVATION, None) or layer.activation

    @functools.wraps(original)
    def activation(x, *args, **kwargs):
        out = original(x, *args, **kwargs)
        seen(out)
        return out

    setattr(activation, WRAPPED_ACTIVATION, original)
    layer.activation = activation
    return True


def unwrap_activation(layer) -> None:
    """Undoes :func:`wrap_activation`."""
    original = getattr(layer.activation, WRAPPED_ACTIVATION, None)
    if original is not None:
        layer.activation = original


def in_graph() -> bool:
    """Whether a ``tf.function`` (not eager code) is being traced; on the
    other backends always (JAX's fit traces its step; PyTorch's runs it)."""
    import keras

    return keras.backend.backend() != "tensorflow" or not tf.executing_eagerly()


def visible_in_current_graph(tensor) -> bool:
    """Whether ``tensor`` belongs to the graph being traced or to one it is
    nested in: the optimizer's step may run in a cond branch
    (LossScaleOptimizer, gradient accumulation), whose graph reaches the
    forward pass's outputs through ``FuncGraph.outer_graph``. No public API
    gives a graph's enclosing graph. Any tensor on the other backends."""
    if not tf.is_tensor(tensor):
        return True
    graph = tf.compat.v1.get_default_graph()
    owner = getattr(tensor, "graph", None)
    while graph is not None:
        if owner is graph:
            return True
        graph = getattr(graph, "outer_graph", None)
    return False


def densify(gradient):
    """A gradient as a dense tensor (an embedding's arrives as
    ``tf.IndexedSlices``)."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def dense_values(gradient):
    """The values a gradient holds: an ``IndexedSlices``' rows, else itself."""
    if isinstance(gradient, tf.IndexedSlices):
        return gradient.values
    return gradient
