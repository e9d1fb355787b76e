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
    # The floor is always run, first, and the others keep the table's order.
    assert [row["variant"] for row in out["rows"]] == [
        "fit",
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
    assert rows["fit"]["total_ratio"] == 1.0
    # Only the logging callback writes event files; the bare loops write none.
    assert rows["fit"]["bytes_per_epoch"] == 0
    assert rows["eager_ref"]["bytes_per_epoch"] == 0
    assert rows["fit+tbgrad"]["bytes_per_epoch"] > 1000
    assert rows["fit-epoch+tbgrad"]["bytes_per_epoch"] > 1000
    assert rows["tape"]["bytes_per_epoch"] > 1000


def test_table_has_a_line_per_row():
    row = bench.Row("study-a", "fit", 2, 201, 1.5, 100.0, 1.6, 1.0, 1.0, 0.0, [100.0], [1.6])
    lines = bench.format_table([row, bench.Row(**{**row.__dict__, "variant": "tape"})])
    assert len(lines.splitlines()) == 4
    assert lines.splitlines()[2] == "| study-a | fit | 2 | 1.50 | 100.0 | 1.00 | 1.60 | 1.00 | 0 |"


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
    assert bench_cli.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [row["variant"] for row in rows] == list(bench.STEP_VARIANTS)
    by_name = {row["variant"]: row for row in rows}
    for row in rows:
        assert row["workload"] == "study-a"
        assert len(row["step_ms_all"]) == 1 and row["step_ms"] > 0
        base = by_name[row["variant"].removesuffix("+stats")]["step_ms"]
        assert math.isclose(row["ratio"], row["step_ms"] / base)
    assert by_name["step"]["ratio"] == by_name["step-xla"]["ratio"] == 1.0
