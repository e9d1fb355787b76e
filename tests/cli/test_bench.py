"""Smoke test of scripts/bench.py: tiny sizes, one repeat, no timing asserts."""

from __future__ import annotations

import json
import math

import pytest

from tbgrad.cli import bench as bench_cli
from tbgrad.lab import bench


def test_json_output_has_one_row_per_variant(capsys):
    argv = [
        "--workloads", "study-a",
        "--variants", "fit+tbgrad", "fit-epoch+tbgrad", "tape", "eager_ref",
        "--samples", "64",
        "--epochs", "2",
        "--repeats", "1",
        "--no-warmup",
        "--json",
    ]  # fmt: skip
    assert bench_cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
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
        "fit-epoch+tbgrad",
        "tape",
        "eager_ref",
    ]
    for row in rows.values():
        assert row["workload"] == "study-a"
        assert row["epochs"] == 2
        assert row["params"] == 2 * 5 + 5 + 4 * (5 * 5 + 5) + 5 + 1
        assert len(row["epoch_ms_all"]) == len(row["total_s_all"]) == 1
        assert 0 < row["first_s"] < row["total_s"]
        assert row["epoch_ms"] > 0
        assert math.isclose(row["total_ratio"], row["total_s"] / rows["fit"]["total_s"])
        # CPU time beside wall time, with its own ratios to fit.
        assert 0 < row["cpu_first_s"] <= row["cpu_total_s"]
        assert row["cpu_epoch_ms"] > 0 and len(row["cpu_epoch_ms_all"]) == 1
        assert math.isclose(
            row["cpu_epoch_ratio"], row["cpu_epoch_ms"] / rows["fit"]["cpu_epoch_ms"]
        )
        assert math.isclose(row["fixed_s"], row["first_s"] - row["epoch_ms"] / 1000)
    assert rows["fit"]["total_ratio"] == rows["fit"]["cpu_total_ratio"] == 1.0
    # Each variant's resolved jit_compile: the tape loop's is its argument.
    assert {row["jit_compile"] for row in rows.values()} <= {"True", "False", "eager"}
    assert rows["tape"]["jit_compile"] == "False"
    assert rows["eager_ref"]["jit_compile"] == "eager"
    # Only the logging callback writes event files; the bare loops write none.
    assert rows["fit"]["bytes_per_epoch"] == 0
    assert rows["eager_ref"]["bytes_per_epoch"] == 0
    assert rows["fit+tbgrad"]["bytes_per_epoch"] > 1000
    assert rows["fit-epoch+tbgrad"]["bytes_per_epoch"] > 1000
    assert rows["tape"]["bytes_per_epoch"] > 1000


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
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench.py: error: {message}")
    assert err.count("\n") == 1


def test_train_step_mode_times_each_step_variant(capsys):
    argv = ["--train-step", "--workloads", "study-a", "--repeats", "1", "--steps", "3", "--json"]
    argv += ["--forms", *bench.FORMS]
    assert bench_cli.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    forms = [bench.form_variant(form) for form in bench.FORMS]
    assert [row["variant"] for row in rows] == list(bench.STEP_VARIANTS) + forms
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


def test_the_bench_knows_every_form_of_the_statistics():
    from tbgrad.lab import stat_forms

    assert bench.FORMS == tuple(stat_forms.FORMS)


def test_train_step_table_and_header_name_each_jit_compile():
    row = {"workload": "study-a", "variant": "step-xla+stats", "jit_compile": True}
    row.update(step_ms=1.5, ratio=1.1, cpu_step_ms=2.0, cpu_ratio=1.2)
    assert bench.format_step_table([row]).splitlines()[2] == (
        "| study-a | step-xla+stats | True | 1.50 | 1.10 | 2.00 | 1.20 |"
    )
    assert bench.jit_summary([row]) == "resolved jit_compile: step-xla+stats True"
