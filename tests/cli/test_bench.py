"""Smoke test of scripts/bench.py: tiny sizes, one repeat, no timing asserts."""

from __future__ import annotations

import ast
import inspect
import json
import math

import numpy as np
import pytest

from tbgrad.cli import bench as bench_cli
from tbgrad.lab import bench

# A logger that saw no gradient was not hooked into the training it times.
pytestmark = pytest.mark.filterwarnings("error:tbgrad.GradientLogger saw no gradient:UserWarning")

# Parameters of the new workloads, counted by hand from their descriptions.
CNN_PARAMS = (
    (3 * 3 * 3 * 16 + 16)  # conv_1
    + (3 * 3 * 16 * 16 + 16)  # conv_2
    + (3 * 3 * 16 * 32 + 32)  # conv_3
    + (3 * 3 * 32 * 32 + 32)  # conv_4
    + (8 * 8 * 32 * 64 + 64)  # dense, on the 8x8x32 pooled maps
    + (64 * 10 + 10)  # output
)
BLOCK_PARAMS = (
    4 * (64 * 64 + 64)  # attention: query, key, value (4 heads x 16) and output
    + 2 * (2 * 64)  # two LayerNormalizations
    + (64 * 128 + 128)  # feed-forward in
    + (128 * 64 + 64)  # feed-forward out
)
TRANSFORMER_PARAMS = 1_000 * 64 + 2 * BLOCK_PARAMS + (64 * 10 + 10)


def _run_json(argv, capsys) -> dict:
    assert bench_cli.main([*argv, "--repeats", "1", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_json_output_has_one_row_per_variant(capsys):
    argv = [
        "--workloads", "study-a",
        "--variants", "fit+tbgrad", "fit+tbgrad(no-diag)", "fit-epoch+tbgrad", "tape",
        "eager_ref",
        "--samples", "64",
        "--epochs", "2",
        "--no-warmup",
    ]  # fmt: skip
    out = _run_json(argv, capsys)
    assert out["repeats"] == 1
    assert set(out["environment"]) >= {"python", "tensorflow", "keras", "tensorboard", "nproc"}
    assert list(out["workloads"]) == ["study-a"]
    rows = {row["variant"]: row for row in out["rows"]}
    # The floor and its A/A twin are always run, first, and the others keep
    # the table's order.
    assert [row["variant"] for row in out["rows"]] == [
        "fit",
        "fit(A/A)",
        "fit+tbgrad",
        "fit+tbgrad(no-diag)",
        "fit-epoch+tbgrad",
        "tape",
        "eager_ref",
    ]
    for row in rows.values():
        assert row["workload"] == "study-a"
        assert row["epochs"] == 2
        assert row["params"] == 2 * 5 + 5 + 4 * (5 * 5 + 5) + 5 + 1
        _check_medians_and_ratios(row, rows["fit"])
    # Each variant's resolved jit_compile: the tape loop's is its argument.
    assert {row["jit_compile"] for row in rows.values()} <= {"True", "False", "eager"}
    assert rows["tape"]["jit_compile"] == "False"
    assert rows["eager_ref"]["jit_compile"] == "eager"
    # Only the logging callback writes event files; the bare loops write none.
    assert rows["fit"]["bytes_per_epoch"] == 0
    assert rows["eager_ref"]["bytes_per_epoch"] == 0
    for variant in ("fit+tbgrad", "fit+tbgrad(no-diag)", "fit-epoch+tbgrad", "tape"):
        assert rows[variant]["bytes_per_epoch"] > 1000


def _check_medians_and_ratios(row: dict, fit: dict) -> None:
    assert len(row["epoch_ms_all"]) == len(row["total_s_all"]) == 1
    assert 0 < row["first_s"] < row["total_s"]
    assert row["epoch_ms"] > 0
    assert math.isclose(row["total_ratio"], row["total_s"] / fit["total_s"])
    # CPU time beside wall time, with its own ratios to fit.
    assert 0 < row["cpu_first_s"] <= row["cpu_total_s"]
    assert row["cpu_epoch_ms"] > 0 and len(row["cpu_epoch_ms_all"]) == 1
    assert math.isclose(row["cpu_epoch_ratio"], row["cpu_epoch_ms"] / fit["cpu_epoch_ms"])
    assert math.isclose(row["fixed_s"], row["first_s"] - row["epoch_ms"] / 1000)
    if row["variant"] == "fit":
        assert row["total_ratio"] == row["cpu_total_ratio"] == 1.0


@pytest.mark.slow
def test_the_cnn_and_the_transformer_run_with_diagnostics_every_step(capsys):
    # One or two batches an epoch: the smallest run with a steady epoch.
    argv = ["--workloads", "cnn", "transformer", "--variants", "fit+tbgrad(diag1)"]
    argv += ["--samples", "64", "--epochs", "2", "--no-warmup"]
    out = _run_json(argv, capsys)
    assert list(out["workloads"]) == ["cnn", "transformer"]
    assert [(row["workload"], row["variant"]) for row in out["rows"]] == [
        (workload, variant)
        for workload in ("cnn", "transformer")
        for variant in ("fit", "fit(A/A)", "fit+tbgrad(diag1)")
    ]
    params = {"cnn": CNN_PARAMS, "transformer": TRANSFORMER_PARAMS}
    for row in out["rows"]:
        fit = next(r for r in out["rows"] if r["workload"] == row["workload"])
        assert row["params"] == params[row["workload"]]
        _check_medians_and_ratios(row, fit)
        assert (row["bytes_per_epoch"] > 1000) is (row["variant"] == "fit+tbgrad(diag1)")


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_the_new_workloads_data_is_seeded_and_labelled(name):
    workload = bench.WORKLOADS[name]
    x, y, validation = bench.load_data(workload, 200)
    again, y_again, _ = bench.load_data(workload, 200)
    np.testing.assert_array_equal(x, again)
    np.testing.assert_array_equal(y, y_again)
    assert validation is None
    assert x.shape == ((200, 32, 32, 3) if name == "cnn" else (200, 32))
    assert y.shape == (200,) and y.dtype == np.int32
    # Labels of a fixed random map: all ten classes occur in 200 samples.
    assert set(y.tolist()) == set(range(10))
    assert workload.loss == "sparse_categorical_crossentropy"


def test_the_new_workloads_layers():
    import keras

    def kinds(model):
        return [type(layer).__name__ for layer in model.layers]

    cnn = bench._build_model(bench.WORKLOADS["cnn"])
    assert kinds(cnn).count("Conv2D") == 4 and kinds(cnn).count("Dense") == 2
    transformer = bench._build_model(bench.WORKLOADS["transformer"])
    assert kinds(transformer).count("MultiHeadAttention") == 2
    assert kinds(transformer).count("LayerNormalization") == 4
    assert kinds(transformer).count("Dense") == 5  # 2 x feed-forward, the classifier
    keras.backend.clear_session()


def test_table_has_a_line_per_row():
    row = bench.Row("study-a", "fit", 2, 201, 1.5, 100.0, 1.6, 1.0, 1.0, 0.0, [100.0], [1.6])
    row.fixed_s, row.cpu_fixed_s, row.cpu_epoch_ms, row.cpu_epoch_ratio = 1.4, 1.3, 90.0, 1.0
    row.cpu_total_s, row.cpu_total_ratio = 2.5, 1.0
    lines = bench.format_table([row, bench.Row(**{**row.__dict__, "variant": "tape"})])
    assert len(lines.splitlines()) == 4
    assert lines.splitlines()[2] == (
        "| study-a | fit | 1.50 | 1.40 (1.30) | 100.0 | 1.00 | 90.0 | 1.00 "
        "| 1.60 | 2.50 | 1.00 | 0 |"
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workloads", "huge"], "argument --workloads: invalid choice: 'huge'"),
        (["--epochs", "1"], "argument --epochs: '1' must be >= 2"),
        (["--repeats", "0"], "argument --repeats: '0' must be a positive integer"),
        (
            ["--variants", "fit+tbgrad(epoch-work)"],
            "argument --variants: invalid choice: 'fit+tbgrad(epoch-work)'",
        ),
        (["--step-variants", "step+stats"], "argument --step-variants: invalid choice"),
        (["--train-step", "--forms", "before"], "unrecognized arguments: --forms before"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench.py: error: {message}")
    assert err.count("\n") == 1


@pytest.mark.slow
def test_train_step_mode_times_each_step_variant(capsys):
    argv = ["--train-step", "--workloads", "study-a", "--steps", "3"]
    rows = _run_json(argv, capsys)["rows"]
    assert [row["variant"] for row in rows] == list(bench.STEP_VARIANTS)
    by_name = {row["variant"]: row for row in rows}
    for row in rows:
        assert row["workload"] == "study-a"
        assert len(row["step_ms_all"]) == len(row["cpu_step_ms_all"]) == 1
        assert row["step_ms"] > 0 and row["cpu_step_ms"] > 0
        xla = row["variant"].startswith("step-xla")
        assert row["jit_compile"] is xla
        base = by_name["step-xla" if xla else "step"]
        assert math.isclose(row["ratio"], row["step_ms"] / base["step_ms"])
        assert math.isclose(row["cpu_ratio"], row["cpu_step_ms"] / base["cpu_step_ms"])
    assert by_name["step"]["ratio"] == by_name["step-xla"]["ratio"] == 1.0


def test_each_step_variant_runs_with_its_floors():
    assert bench.step_variants(["step+tbgrad"]) == ["step", "step(A/A)", "step+tbgrad"]
    assert bench.step_variants(["step-xla+tbgrad", "step+tbgrad(no-diag)"]) == [
        "step",
        "step(A/A)",
        "step+tbgrad(no-diag)",
        "step-xla",
        "step-xla(A/A)",
        "step-xla+tbgrad",
    ]


def test_train_step_table_and_header_name_each_jit_compile():
    row = {"workload": "study-a", "variant": "step-xla+tbgrad", "jit_compile": True}
    row.update(step_ms=1.5, ratio=1.1, cpu_step_ms=2.0, cpu_ratio=1.2)
    assert bench.format_step_table([row]).splitlines()[2] == (
        "| study-a | step-xla+tbgrad | True | 1.50 | 1.10 | 2.00 | 1.20 |"
    )
    assert bench.jit_summary([row]) == "resolved jit_compile: step-xla+tbgrad True"


def test_the_bench_uses_only_the_public_api():
    # The bench times what users run: tbgrad's public names and the lab,
    # nothing of the library's internals.
    tree = ast.parse(inspect.getsource(bench))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names if alias.name.startswith("tbgrad")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tbgrad"):
            imported.add(node.module)
    assert imported == {"tbgrad", "tbgrad.lab.data", "tbgrad.lab.models"}
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "tbgrad"
    }
    assert used == {"TensorBoard", "GradientLogger", "train_with_tape"}
