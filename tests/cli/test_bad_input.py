"""Bad input to the library and to train.py: clear errors, nothing written."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import tbgrad
from tbgrad import tags
from tbgrad.cli.train import main
from tbgrad.eventlog import load_run
from tbgrad.lab import distribute
from tbgrad.lab.config import make_config
from tbgrad.lab.models import make_optimizer

NAN, INF = math.nan, math.inf


# -- make_config / RunConfig ---------------------------------------------------


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("lr", NAN, ValueError),
        ("lr", INF, ValueError),
        ("lr", -INF, ValueError),
        ("lr", 0.0, ValueError),
        ("lr", "0.1", ValueError),
        ("momentum", NAN, ValueError),
        ("momentum", INF, ValueError),
        ("momentum", 1.0, ValueError),
        ("depth", 0, ValueError),
        ("depth", INF, ValueError),
        ("depth", 2.0, ValueError),
        ("width", -1, ValueError),
        ("epochs", "3", ValueError),
        ("batch_size", True, ValueError),
        ("seed", -1, ValueError),
        ("seed", 1.5, ValueError),
        ("histogram_freq", -1, ValueError),
        ("histogram_freq", "1", ValueError),
        ("histogram_freq", NAN, ValueError),
        ("update_freq", 0, ValueError),
        ("update_freq", "batch", ValueError),
        ("replicas", 0, ValueError),
        ("replicas", distribute.MAX_REPLICAS + 1, ValueError),
        ("replicas", 2.0, TypeError),
        ("deterministic", "yes", TypeError),
        ("act", "relux", ValueError),
        ("init", "bogus", ValueError),
        ("output_init", "bogus", ValueError),
        ("optimizer", "sgdd", ValueError),
        ("dataset", "mnist", ValueError),
        ("loop", "keras", ValueError),
    ],
)
def test_make_config_names_the_received_value(field, value, error):
    with pytest.raises(error, match=f"Received: {field}={value!r}".replace("(", r"\(")):
        make_config(**{field: value})


def test_make_config_unknown_preset_and_field():
    with pytest.raises(ValueError, match=r"Unknown preset 'A9'.*Received: preset='A9'"):
        make_config("A9")
    with pytest.raises(TypeError, match=r"Unknown config field 'dpeth'.*Received: dpeth=3"):
        make_config(dpeth=3)


# -- build_mlp, make_optimizer -------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(depth=0), ValueError, "Received: depth=0"),
        (dict(depth=INF), TypeError, "Received: depth=inf"),
        (dict(width=NAN), TypeError, "Received: width=nan"),
        (dict(width=2.5), TypeError, "Received: width=2.5"),
        (dict(input_dim=-2), ValueError, "Received: input_dim=-2"),
        (dict(activation="relux"), ValueError, "Received: act='relux'"),
        (dict(init="bogus"), ValueError, "Received: init='bogus'"),
    ],
)
def test_build_mlp_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        tbgrad.lab.build_mlp(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="sgd", learning_rate=NAN), "Received: learning_rate=nan"),
        (dict(name="adam", learning_rate=INF), "Received: learning_rate=inf"),
        (dict(name="sgd", learning_rate=-0.1), r"Received: learning_rate=-0.1"),
        (dict(name="rmsprop", momentum=NAN), "Received: momentum=nan"),
        (dict(name="sgd", momentum=1.5), r"Received: momentum=1.5"),
        (dict(name="lbfgs"), "Received: optimizer='lbfgs'"),
    ],
)
def test_make_optimizer_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(**kwargs)


# -- GradientTensorBoard, train_with_tape -------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(histogram_freq=-1), ValueError, "Received: histogram_freq=-1"),
        (dict(histogram_freq="1"), TypeError, "Received: histogram_freq='1'"),
        (dict(histogram_freq=NAN), TypeError, "Received: histogram_freq=nan"),
        (dict(update_freq=0), ValueError, "Received: update_freq=0"),
        (dict(update_freq="step"), ValueError, "Received: update_freq='step'"),
        (dict(update_freq=1.5), ValueError, r"Received: update_freq=1.5"),
    ],
)
def test_callback_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        tbgrad.TensorBoard("unused", **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(epochs=0), ValueError, "Received: epochs=0"),
        (dict(epochs=INF), TypeError, "Received: epochs=inf"),
        (dict(batch_size="32"), TypeError, "Received: batch_size='32'"),
        (dict(batch_size=NAN), TypeError, "Received: batch_size=nan"),
        (dict(histogram_freq=-2), ValueError, "Received: histogram_freq=-2"),
        (dict(update_freq=-5), ValueError, "Received: update_freq=-5"),
        (dict(shuffle_buffer=0), ValueError, "Received: shuffle_buffer=0"),
        (dict(validation_batch_size=0), ValueError, "Received: validation_batch_size=0"),
    ],
)
def test_train_with_tape_bad_arguments(tmp_path, kwargs, error, match):
    model = tbgrad.lab.build_mlp(depth=1, width=2)
    x = np.zeros((8, 2), "float32")
    y = np.zeros(8, "float32")
    with pytest.raises(error, match=match):
        tbgrad.train_with_tape(model, x, y, log_dir=tmp_path / "run", verbose=0, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_train_with_tape_length_mismatch(tmp_path):
    model = tbgrad.lab.build_mlp(depth=1, width=2)
    with pytest.raises(ValueError, match=r"Received: len\(x\)=8, len\(y\)=7"):
        tbgrad.train_with_tape(
            model, np.zeros((8, 2)), np.zeros(7), log_dir=tmp_path / "run", verbose=0
        )
    assert list(tmp_path.iterdir()) == []


def test_replicas_after_tensorflow_started():
    # The pytest process initialized TensorFlow's devices long ago.
    with pytest.raises(ValueError, match="already initialized.*Received: replicas=3"):
        distribute.configure_cpu_replicas(3)
    with pytest.raises(ValueError, match="found 1 CPU.*Received: replicas=3"):
        distribute.make_strategy(3)


# -- models the callback cannot fully log --------------------------------------


def test_model_without_kernels_warns_and_writes_epoch_scalars(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((1,)), keras.layers.BatchNormalization(), keras.layers.Dropout(0.1)]
    )
    model.compile("sgd", "mse")
    x = np.linspace(-1, 1, 16, dtype="float32").reshape(-1, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            x,
            x,
            epochs=2,
            batch_size=8,
            verbose=0,
            callbacks=[tbgrad.TensorBoard(tmp_path)],
        )
    assert any("has no trainable weight matrix" in str(w.message) for w in caught)
    run = load_run(tmp_path)
    np.testing.assert_allclose(run.train.scalar("epoch_loss"), history.history["loss"], rtol=1e-6)
    assert run.train.steps("epoch_loss") == [0, 1]
    assert set(run.train.scalars) == {"epoch_loss", "epoch_learning_rate"}
    # Keras's per-weight histograms only (the BatchNormalization's).
    assert all(tag.endswith("/histogram") for tag in run.train.histograms)


def test_layers_without_kernel_are_skipped(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((2, 1)),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(4, activation="tanh", name="dense_a"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dropout(0.2, name="drop"),
            keras.layers.Dense(1, activation="sigmoid", name="out"),
        ]
    )
    model.compile("sgd", "binary_crossentropy")
    x = np.random.default_rng(0).normal(size=(16, 2, 1)).astype("float32")
    y = (x[:, 0, 0] > 0).astype("float32")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[tbgrad.TensorBoard(tmp_path)])
    run = load_run(tmp_path)
    logged = {**run.train.scalars, **run.train.histograms}
    logged = {tag for tag in logged if not tag.endswith("/histogram")}  # Keras's per weight
    expected = set(
        tags.layer_tags(["dense_a", "out"], activations={"dense_a": "tanh", "out": "sigmoid"})
    )
    assert {tag for tag in logged if "/" in tag} == {tag for tag in expected if "/" in tag}


# -- train.py ------------------------------------------------------------------
def _exit_code(argv):
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.mark.parametrize(
    "args, named",
    [
        (["--lr", "nan"], "'nan'"),
        (["--lr", "inf"], "'inf'"),
        (["--lr", "-1"], "'-1'"),
        (["--momentum", "nan"], "'nan'"),
        (["--epochs", "0"], "'0'"),
        (["--depth", "inf"], "'inf'"),
        (["--replicas", "0"], "'0'"),
        (["--replicas", "two"], "'two'"),
        (
            ["--replicas", str(distribute.MAX_REPLICAS + 1)],
            f"replicas={distribute.MAX_REPLICAS + 1}",
        ),
        (["--act", "relux"], "'relux'"),
        (["--optimizer", "lbfgs"], "'lbfgs'"),
        (["--preset", "A9"], "'A9'"),
    ],
)
def test_cli_bad_flag_one_line_nothing_written(tmp_path, capsys, args, named):
    logdir = tmp_path / "logs"
    assert _exit_code([*args, "--logdir", str(logdir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train.py: error: "), err
    assert named in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_cli_logdir_is_a_file(tmp_path, capsys):
    target = tmp_path / "logs"
    target.write_text("not a folder")
    assert _exit_code(["--epochs", "1", "--logdir", str(target), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == f"train.py: error: logdir {str(target)!r} exists and is not a directory\n"
    assert target.read_text() == "not a folder"
    assert [p.name for p in tmp_path.iterdir()] == ["logs"]


def test_cli_logdir_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "sub" / "logs"
    assert _exit_code(["--epochs", "1", "--logdir", str(target), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"train.py: error: logdir {str(target)!r} cannot be created: "
        f"{str(blocker)!r} is not a directory\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_cli_logdir_not_writable(tmp_path):
    # A folder the user may enter but not write in. Root may write anywhere
    # (CAP_DAC_OVERRIDE): as root, train.py runs without that capability
    # (util-linux setpriv), and so obeys the folder's permission bits.
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is not installed")
        caps = "-dac_override,-dac_read_search"
        prefix = [setpriv, "--bounding-set", caps, "--inh-caps", caps]
    root = Path(__file__).resolve().parents[2]
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    target = locked / "logs"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(root))
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, str(root / "scripts" / "train.py"), "--logdir", str(target)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        f"train.py: error: logdir {str(target)!r} cannot be created: "
        f"{str(locked)!r} is not writable\n"
    )
    assert list(locked.iterdir()) == []
