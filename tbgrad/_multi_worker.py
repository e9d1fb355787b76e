"""Multi-worker training: which process writes the run.

Under ``tf.distribute.MultiWorkerMirroredStrategy`` every worker runs the
same program with the same log folder. Only the chief writes the run: the
task of type ``chief``, or worker 0 when the cluster has none (TensorFlow's
own rule, ``multi_worker_util.is_chief``). Every other worker writes into a
temporary local folder of its own, removed when it closes, as Keras's
callbacks did under this strategy (``tf.keras``'s ``distributed_file_utils``):
so every worker runs the same ops, including the all-reduces inside the
statistics and the metrics, and nothing of theirs reaches the run.

Keras 3's ``model.fit`` does not run under this strategy (with several
workers it fails with "Attempt to convert a value (PerReplica...) to a
Tensor", before any callback is called:
https://github.com/keras-team/keras/issues/20585); :func:`check_fit`
raises a clearer error and points to the loops that do run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import tensorflow as tf

KERAS_FIT_ISSUE = "https://github.com/keras-team/keras/issues/20585"
TEMP_PREFIX = "tbgrad-worker-"
_TRAINING_JOBS = ("chief", "worker")


def is_multi_worker(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether ``strategy`` (default: the current one) spans several workers."""
    resolver = _resolver(strategy)
    return resolver is not None and _cluster_size(resolver.cluster_spec().as_dict()) > 1


def worker_count(strategy: tf.distribute.Strategy | None = None) -> int:
    """The training tasks (chief and workers) ``strategy`` spans: 1 unless it
    is a multi-worker strategy."""
    resolver = _resolver(strategy)
    return max(1, _cluster_size(resolver.cluster_spec().as_dict())) if resolver else 1


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the run: True except on a worker of a
    multi-worker strategy that is not its chief."""
    resolver = _resolver(strategy)
    if resolver is None:
        return True
    return is_chief_task(resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict())


def is_chief_task(task_type: str | None, task_id: int | None, cluster: dict) -> bool:
    """TensorFlow's rule: the ``chief`` task (or an evaluator, which trains
    nothing), else worker 0 of a cluster without a chief; a process outside
    any cluster (``task_type`` None) writes its own run."""
    if task_type in (None, "chief", "evaluator"):
        return True
    return "chief" not in cluster and task_type == "worker" and task_id == 0


def writable_log_dir(log_dir: str, strategy: tf.distribute.Strategy | None) -> tuple[str, bool]:
    """The folder this process writes ``log_dir``'s run into, and whether it
    is a temporary one (a worker other than the chief) to remove on close."""
    if is_chief(strategy):
        return log_dir, False
    return tempfile.mkdtemp(prefix=TEMP_PREFIX), True


def remove_temporary(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def check_fit(caller: str, strategy: tf.distribute.Strategy | None = None) -> None:
    """Raises ValueError if ``model.fit`` is about to run on several workers.

    ``fit`` fails before any callback sees the model, so this is checked
    where the callback is made: inside the strategy's scope, or, outside
    it, when ``TF_CONFIG`` describes a cluster of several training tasks.
    """
    if is_multi_worker(strategy):
        received = f"a MultiWorkerMirroredStrategy over {worker_count(strategy)} workers"
    else:
        workers = _tf_config_workers()
        if workers <= 1:
            return
        received = f"TF_CONFIG with a cluster of {workers} workers"
    raise fit_unsupported(caller, received)


def fit_unsupported(caller: str, received: str) -> ValueError:
    """The error for ``model.fit`` on several workers, naming what was received."""
    return ValueError(
        f"{caller} cannot log model.fit on several workers: Keras 3's fit does not run "
        f"under MultiWorkerMirroredStrategy ({KERAS_FIT_ISSUE}). Train with "
        "tbgrad.train_with_tape(model, x, y, log_dir=...) or your own loop with "
        "tbgrad.GradientLogger: both run on several workers, and only the chief "
        f"writes the run. Received: {received}"
    )


def _resolver(strategy):
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    return strategy.cluster_resolver


def _cluster_size(cluster: dict) -> int:
    return sum(len(cluster.get(job, ())) for job in _TRAINING_JOBS)


def _tf_config_workers() -> int:
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        return _cluster_size(config.get("cluster") or {})
    except (ValueError, TypeError, AttributeError):
        return 0  # Not a cluster description: TensorFlow will say so itself.
