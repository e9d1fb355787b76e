"""MultiWorkerMirroredStrategy: two workers, the chief writes, one device's values.

Two processes on 127.0.0.1 (free ports, TF_CONFIG), both given the same log
folder, run tests/library/multi_worker_run.py: ``train.py --strategy
multi-worker`` (``train_with_tape``) and an own loop with ``GradientLogger``.
Meanwhile this process runs the same on one device. Each worker gets a
TMPDIR of its own, so that its temporary folders can be checked.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tbgrad import _multi_worker, tags
from tbgrad.cli.train import main as train_main
from tbgrad.eventlog import load_run

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("multi_worker_run.py")
TOL = 1e-5  # as for MirroredStrategy (tests/library/test_distributed.py)
NAME = "relu-he_uniform-d2-w4-sgd-s1-tape"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def start_worker(index: int, cluster: dict, out: Path) -> subprocess.Popen:
    tmp = out / f"tmp-{index}"
    tmp.mkdir()
    config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
    env = dict(
        os.environ,
        TF_CONFIG=json.dumps(config),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=str(ROOT),
        TMPDIR=str(tmp),
    )
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out / "logs")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Returns (folder, [worker 0's report, worker 1's report])."""
    out = tmp_path_factory.mktemp("multi_worker")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    procs = [start_worker(index, cluster, out) for index in range(2)]
    try:
        spec = importlib.util.spec_from_file_location("multi_worker_run", SCRIPT)
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        with contextlib.redirect_stdout(io.StringIO()):
            assert script.main([str(out / "single"), "--single"]) == 0
        reports = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=240)
            assert proc.returncode == 0, stderr
            reports.append(json.loads(stdout.splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return out, reports


@pytest.mark.slow
def test_the_chief_alone_writes_every_run(runs):
    out, (chief, other) = runs
    assert chief["task"] == ["worker", 0] and chief["chief"]
    assert other["task"] == ["worker", 1] and not other["chief"]
    assert chief["cli"] == other["cli"] == 0
    logs = out / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["cli", "own"]
    assert [p.name for p in (logs / "cli").iterdir()] == [f"{NAME}-w2"]
    for run_dir in (logs / "cli" / f"{NAME}-w2", logs / "own"):
        run = load_run(run_dir)
        files = run.train.event_files + run.validation.event_files
        assert len(run.train.event_files) == 1, run_dir
        assert len(run.validation.event_files) == (0 if run_dir.name == "own" else 1)
        # Event file names hold the writer's process id: the chief's.
        assert all(f".{chief['pid']}." in name for name in files), files
    result = json.loads((logs / "cli" / f"{NAME}-w2" / "tbgrad_run.json").read_text())
    assert result["workers"] == 2 and result["config"]["loop"] == "tape"
    # The other worker's temporary folders are gone.
    assert chief["temporary_left"] == other["temporary_left"] == []
    assert list((out / "tmp-1").iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("run", ["cli", "own"])
def test_logged_values_equal_single_device(runs, run):
    out, _ = runs
    suffix = {"cli": (f"cli/{NAME}", f"cli/{NAME}-w2")}.get(run, (run, run))
    one, two = load_run(out / "single" / suffix[0]), load_run(out / "logs" / suffix[1])
    for split in ("train", "validation"):
        a, b = one.splits[split], two.splits[split]
        assert set(a.scalars) == set(b.scalars) and set(a.histograms) == set(b.histograms)
        for tag in a.scalars:
            assert b.steps(tag) == a.steps(tag), tag
            np.testing.assert_allclose(
                b.scalar(tag), a.scalar(tag), rtol=TOL, atol=TOL, err_msg=tag
            )
        for tag in a.histograms:
            if tag.startswith(tags.ACTIVATIONS + "/"):
                # A worker's outputs are its part of the batch: the
                # histogram is the chief's part (tbgrad.statistics.activations).
                continue
            for (_, ha), (_, hb) in zip(a.histograms[tag], b.histograms[tag]):
                np.testing.assert_allclose(hb[:, :2], ha[:, :2], rtol=TOL, atol=TOL, err_msg=tag)
                np.testing.assert_array_equal(hb[:, 2], ha[:, 2], err_msg=tag)
    grads = two.train.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, "hidden_1"))
    assert len(grads) == 2 and grads.min() > 0
    if run == "cli":  # update_freq 2: batch_* at the same global steps
        batch = tags.layer_tag(tags.BATCH_GRAD_MEAN_ABS, "output")
        assert two.train.steps(batch) == one.train.steps(batch) == list(range(2, 33, 2))


@pytest.mark.slow
def test_fit_and_unseeded_shuffling_on_several_workers_are_refused(runs):
    _, reports = runs
    for report in reports:
        assert report["callback"].startswith(
            "tbgrad.TensorBoard cannot log model.fit on several workers: Keras 3's fit does "
            "not run under MultiWorkerMirroredStrategy "
            "(https://github.com/keras-team/keras/issues/20585). Train with "
            "tbgrad.train_with_tape("
        )
        assert report["callback"].endswith("Received: TF_CONFIG with a cluster of 2 workers")
        # Keras's own failure, which the error above stands in for. When a
        # Keras release fixes keras-team/keras#20585 this fails: drop
        # _multi_worker.check_fit from tbgrad.TensorBoard then.
        assert report["fit"].startswith("ValueError: Attempt to convert a value (PerReplica")
        assert report["unseeded"] == (
            "shuffling on several workers needs a seed, the same on every worker, so that "
            "they split the same global batches. Received: shuffle=True, seed=None"
        )


@pytest.mark.parametrize(
    ("task_type", "task_id", "cluster", "chief"),
    [
        (None, None, {}, True),
        ("worker", 0, {"worker": ["a", "b"]}, True),
        ("worker", 1, {"worker": ["a", "b"]}, False),
        ("chief", 0, {"chief": ["a"], "worker": ["b"]}, True),
        ("worker", 0, {"chief": ["a"], "worker": ["b"]}, False),
        ("evaluator", 0, {"worker": ["a", "b"], "evaluator": ["c"]}, True),
    ],
)
def test_which_task_is_the_chief(task_type, task_id, cluster, chief):
    assert _multi_worker.is_chief_task(task_type, task_id, cluster) is chief


def test_callback_refuses_a_tf_config_cluster(monkeypatch):
    import tbgrad

    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"], "evaluator": ["d:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster}))
    with pytest.raises(ValueError, match=r"keras/issues/20585.*cluster of 3 workers$"):
        tbgrad.TensorBoard("logs")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["b:1"]}}))
    tbgrad.TensorBoard("logs")  # one worker: fit runs


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--loop", "fit"], "keras-team/keras/issues/20585). Received: --loop fit"),
        (["--replicas", "2"], "splits one machine. Received: --replicas 2"),
    ],
)
def test_cli_multi_worker_bad_flags(tmp_path, capsys, flags, message):
    argv = ["--strategy", "multi-worker", *flags, "--logdir", str(tmp_path / "logs")]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: --strategy multi-worker ") and err.endswith(
        message + "\n"
    )
    assert list(tmp_path.iterdir()) == []
