"""Each private Keras/TensorFlow part tbgrad reaches (tbgrad/_compat.py) still
exists in the installed release, and does what tbgrad relies on.

A failure here names the part a release removed or changed; the fix goes in
tbgrad/_compat.py only.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tbgrad import _compat
from tbgrad.eventlog import load_split


def _model():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="inner_dense")])
    return keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(1, name="out")])


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop", "adamw"])
def test_every_optimizer_has_the_update_step_and_passes_the_applied_gradients(optimizer):
    opt = keras.optimizers.get(optimizer)
    assert _compat.has_update_step(opt), (
        f"keras.optimizers.{type(opt).__name__} has no {_compat.OPTIMIZER_UPDATE_STEP}: "
        "this Keras release changed the optimizer's update step"
    )
    var = keras.Variable(np.ones(3, "float32"))
    seen = []
    _compat.wrap_update_step(opt, lambda grads, variables: seen.append((grads, variables)))
    assert _compat.is_update_step_wrapped(opt)
    grad = tf.constant([0.5, -1.0, 2.0])
    opt.apply([grad], [var])
    assert len(seen) == 1, f"{_compat.OPTIMIZER_UPDATE_STEP} was not called by apply()"
    np.testing.assert_array_equal(np.asarray(seen[0][0][0]), grad.numpy())
    assert seen[0][1][0] is var
    _compat.unwrap_update_step(opt)
    assert not _compat.is_update_step_wrapped(opt)
    opt.apply([grad], [var])
    assert len(seen) == 1


def test_sublayers_walk_nested_and_subclassed_models():
    model = _model()
    names = [layer.name for layer in _compat.sublayers(model)]
    assert "out" in names and any(isinstance(s, keras.Sequential) for s in model.layers)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.a = keras.layers.Dense(2, name="a")
            self.b = keras.layers.Dense(1, name="b")

        def call(self, x):
            return self.b(self.a(x))

    assert [layer.name for layer in _compat.sublayers(Sub())] == ["a", "b"], (
        "Layer._layers no longer lists a subclassed model's layers in order"
    )


def test_all_layers_built_sees_nested_layers():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.a = keras.layers.Dense(2)

        def call(self, x):
            return self.a(x)

    model = Sub()
    assert not _compat.all_layers_built(model)
    model(np.zeros((1, 3), "float32"))
    assert _compat.all_layers_built(model)


def test_write_raw_summary_writes_without_as_default(tmp_path):
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.util import tensor_util

    writer = tf.summary.create_file_writer(str(tmp_path))
    value = summary_pb2.Summary.Value(tag="x")
    value.metadata.plugin_data.plugin_name = "scalars"
    value.tensor.CopyFrom(tensor_util.make_tensor_proto(np.float32(2.5)))
    data = tf.constant(summary_pb2.Summary(value=[value]).SerializeToString())
    assert _compat.write_raw_summary(writer, 7, data), (
        "tf.summary.SummaryWriter has no _resource: write_raw_proto_summary cannot be used"
    )
    writer.close()
    split = load_split(tmp_path)
    assert split.scalars["x"] == [(7, 2.5)]


def test_op_determinism_getter():
    assert _compat.op_determinism_enabled() in (True, False)


def test_loss_scale_optimizer_skips_through_its_skip_step():
    opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    assert _compat.has_skip_step(opt), (
        f"LossScaleOptimizer has no {_compat.LOSS_SCALE_SKIP_STEP}: this Keras release "
        "changed how it skips a step"
    )
    assert not _compat.has_skip_step(keras.optimizers.SGD())
    var = keras.Variable(np.ones(2, "float32"))
    skips, updates = [], []
    _compat.wrap_skip_step(opt, lambda: skips.append(1))
    _compat.wrap_update_step(opt.inner_optimizer, lambda g, v: updates.append(1))
    opt.apply([tf.constant([np.inf, 1.0])], [var])
    assert (len(skips), len(updates)) == (1, 0), "a non-finite step was not skipped there"
    opt.apply([tf.constant([1.0, 1.0])], [var])
    assert (len(skips), len(updates)) == (1, 1), "a finite step went through the skip step"
    _compat.unwrap_skip_step(opt)
    _compat.unwrap_update_step(opt.inner_optimizer)
    opt.apply([tf.constant([np.nan, 1.0])], [var])
    assert len(skips) == 1


def test_keras_tensorboard_has_the_parts_tbgrad_tensorboard_uses(tmp_path):
    callback = keras.callbacks.TensorBoard(tmp_path)
    callback.set_model(_model())
    for name in _compat.KERAS_TENSORBOARD_METHODS:
        assert hasattr(keras.callbacks.TensorBoard, name), (
            f"keras.callbacks.TensorBoard has no {name}: tbgrad.TensorBoard overrides or calls it"
        )
    for name in _compat.KERAS_TENSORBOARD_ATTRIBUTES:
        assert hasattr(callback, name), f"keras.callbacks.TensorBoard sets no {name}"


def test_functional_cond_stays_one_if_op_and_picks_the_branch():
    calls = tf.Variable(0.0)

    @tf.function
    def pick(pred, x):
        return _compat.functional_cond(pred, lambda: x + calls.assign_add(1.0) * 0.0, lambda: -x)

    assert float(pick(tf.constant(True), tf.constant(2.0))) == 2.0
    assert float(pick(tf.constant(False), tf.constant(2.0))) == -2.0
    assert calls.numpy() == 1.0, "the branch not taken ran"
    graph = pick.get_concrete_function(tf.constant(True), tf.constant(2.0)).graph
    ifs = [op for op in graph.get_operations() if op.type in ("If", "StatelessIf", "Case")]
    assert ifs, "cond_v2.indexed_case made no functional If/Case op"
    for op in ifs:
        assert op.get_attr("_lower_using_switch_merge") is False, (
            "cond_v2.indexed_case(lower_using_switch_merge=False) no longer keeps the op "
            "from being lowered to Switch/Merge"
        )
    # Eagerly, the branch is just called.
    assert float(_compat.functional_cond(tf.constant(False), lambda: 1.0, lambda: 0.0)) == 0.0


@pytest.mark.parametrize(
    ("clip", "expected"),
    [({"clipnorm": 1.0}, [0.2, -0.4, 0.8, 0.4]), ({"clipvalue": 0.5}, [0.5, -0.5, 0.5, 0.5])],
)
def test_clip_gradients_sees_the_gradients_before_and_after_clipping(clip, expected):
    opt = keras.optimizers.SGD(0.1, **clip)
    assert _compat.has_clip_gradients(opt), (
        f"keras.optimizers.SGD has no {_compat.OPTIMIZER_CLIP_GRADIENTS}: "
        "this Keras release changed how apply() clips the gradients"
    )
    var = keras.Variable(np.ones(4, "float32"))
    seen = []
    _compat.wrap_clip_gradients(opt, lambda unclipped, clipped: seen.append((unclipped, clipped)))
    grad = tf.constant([0.5, -1.0, 2.0, 1.0])
    opt.apply([grad], [var])
    assert len(seen) == 1, f"{_compat.OPTIMIZER_CLIP_GRADIENTS} was not called by apply()"
    np.testing.assert_array_equal(np.asarray(seen[0][0][0]), grad.numpy())
    np.testing.assert_allclose(np.asarray(seen[0][1][0]), expected, rtol=1e-6)
    # The update applied the clipped gradient.
    np.testing.assert_allclose(var.numpy(), 1 - 0.1 * np.array(expected), rtol=1e-6)
    _compat.unwrap_clip_gradients(opt)
    assert _compat.OPTIMIZER_CLIP_GRADIENTS not in vars(opt)


def test_update_step_calls_after_once_the_weights_moved():
    opt = keras.optimizers.SGD(0.5)
    var = keras.Variable(np.ones(2, "float32"))
    after = []
    _compat.wrap_update_step(opt, lambda grads, variables: None, lambda: after.append(var.numpy()))
    opt.apply([tf.constant([1.0, 2.0])], [var])
    np.testing.assert_array_equal(after, [[0.5, 0.0]])
    _compat.unwrap_update_step(opt)


def test_keras_training_reads_the_outer_calls_training_flag():
    seen = []

    class Probe(keras.layers.Layer):
        def call(self, x):
            seen.append(_compat.keras_training())
            return x

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2), Probe()])
    x = np.ones((1, 2), "float32")
    seen.clear()  # building the model called it symbolically
    model(x, training=True)
    model(x, training=False)
    model(x)
    assert seen == [True, False, False], f"{_compat.KERAS_CALL_CONTEXT}: {seen}"


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_wrap_activation_sees_the_outputs_and_keeps_the_config(activation):
    layer = keras.layers.Dense(3, activation=activation)
    layer.build((None, 2))
    config = layer.get_config()
    stale, outputs = [], []
    assert _compat.wrap_activation(layer, stale.append)
    # Wrapped again (a second logger, or one a failed fit left behind): the
    # new wrapper replaces the old one rather than stacking on it.
    assert _compat.wrap_activation(layer, outputs.append)
    y = layer(np.ones((4, 2), "float32"))
    assert len(outputs) == 1 and not stale
    np.testing.assert_array_equal(np.asarray(outputs[0]), np.asarray(y))
    assert layer.get_config() == config  # the wrapper serialises as the original
    _compat.unwrap_activation(layer)
    assert layer.activation is getattr(keras.activations, activation)


def test_a_tensor_of_the_outer_graph_is_visible_in_a_cond_branch():
    # FuncGraph.outer_graph: the optimizer's step may run in a cond branch
    # (LossScaleOptimizer) and still see the forward pass's outputs.
    seen = []

    @tf.function
    def step(x):
        outer = x * 2.0
        seen.append(_compat.visible_in_current_graph(outer))

        def branch():
            seen.append(_compat.visible_in_current_graph(outer))
            return outer

        out = tf.cond(x[0] > 0, branch, lambda: outer)
        other = tf.function(lambda: tf.constant(1.0)).get_concrete_function().outputs[0]
        seen.append(_compat.visible_in_current_graph(other))
        return out

    step(tf.constant([1.0]))
    assert seen == [True, True, False]


def test_producer_walks_a_functional_graph_from_its_output():
    inputs = keras.Input((3,), name="x")
    hidden = keras.layers.Dense(4, name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(hidden))
    (output,) = _compat.symbolic_outputs(model)
    operation, fed = _compat.producer(output)
    assert operation.name == "head" and fed[0] is hidden
    assert _compat.producer(inputs)[1] == []  # an input: nothing feeds it
    # A Sequential's graph is its functional model's; a subclassed model has none.
    assert len(_compat.symbolic_outputs(_model())) == 1
    assert _compat.symbolic_outputs(keras.Model()) == []


@pytest.mark.parametrize("where", ["optimizer", "model"])
def test_tracked_state_rides_along_but_is_never_saved(where):
    # On JAX the statistics' state must be among the optimizer's (or the
    # model's non-trainable) variables to be carried by fit's step; what
    # Keras saves stays its own, and untracking restores both.
    model = _model()
    optimizer = keras.optimizers.SGD()
    optimizer.build(model.trainable_variables)
    owner = optimizer if where == "optimizer" else model
    listed = (
        (lambda: owner.variables)
        if where == "optimizer"
        else (lambda: owner.non_trainable_variables)
    )
    state = [keras.Variable(np.zeros(2, "float32"), trainable=False, name="tbgrad_state")]
    track, untrack = {
        "optimizer": (_compat.track_in_optimizer, _compat.untrack_from_optimizer),
        "model": (_compat.track_in_model, _compat.untrack_from_model),
    }[where]
    before = [id(v) for v in listed()]
    saved_before = {}
    owner.save_own_variables(saved_before)
    track(owner, state)
    assert id(state[0]) in [id(v) for v in listed()]
    saved = {}
    owner.save_own_variables(saved)
    assert saved.keys() == saved_before.keys()
    assert [id(v) for v in listed()][: len(before)] == before  # restored after saving
    untrack(owner, state)
    assert [id(v) for v in listed()] == before
    assert "save_own_variables" not in vars(owner)
