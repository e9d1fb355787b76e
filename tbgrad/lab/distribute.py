"""Several replicas on one machine (``train.py --replicas N``), or several
machines (``train.py --strategy multi-worker``).

With GPUs, ``N`` of them; on a CPU-only machine the CPU is split into ``N``
logical devices, which TensorFlow allows only before it initializes its
devices (the first op, or ``tf.config.list_logical_devices``). Hence two
steps: :func:`configure_cpu_replicas` as early as possible, then
:func:`make_strategy` when the model is built.

Example:
    >>> from tbgrad.lab import distribute
    >>> distribute.configure_cpu_replicas(2)  # before any TensorFlow op
    >>> strategy = distribute.make_strategy(2)
    >>> with strategy.scope():
    ...     model = tbgrad.lab.build_mlp()

On several workers, each process calls :func:`start_multi_worker` first
thing: ``MultiWorkerMirroredStrategy`` configures TensorFlow's collective
ops, which it allows only before its devices are initialized.
"""

from __future__ import annotations

import tensorflow as tf

from tbgrad.lab.choices import MAX_REPLICAS  # noqa: F401 - re-exported
from tbgrad.lab.config import check_replicas

_multi_worker_strategy: tf.distribute.MultiWorkerMirroredStrategy | None = None


def configure_cpu_replicas(replicas: int) -> None:
    """Splits the CPU into ``replicas`` logical devices (no-op with GPUs or 1).

    Raises:
        ValueError: TensorFlow has already initialized its devices with fewer
            logical CPUs than ``replicas``.
    """
    check_replicas(replicas)
    if replicas == 1 or tf.config.list_physical_devices("GPU"):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu) or []
    if len(current) >= replicas:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
    except RuntimeError:
        raise ValueError(
            f"cannot split the CPU into {replicas} logical devices: TensorFlow has "
            "already initialized its devices (call configure_cpu_replicas first). "
            f"Received: replicas={replicas}"
        ) from None


def start_multi_worker() -> tf.distribute.MultiWorkerMirroredStrategy:
    """This process's ``MultiWorkerMirroredStrategy``, made from ``TF_CONFIG``
    on the first call (without it: one worker), the same one afterwards.

    Raises:
        ValueError: TensorFlow has already initialized its devices.
    """
    global _multi_worker_strategy
    if _multi_worker_strategy is None:
        try:
            _multi_worker_strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as err:
            raise ValueError(
                f"cannot start MultiWorkerMirroredStrategy: {err} (call "
                "start_multi_worker before TensorFlow initializes its devices)"
            ) from None
    return _multi_worker_strategy


def make_strategy(replicas: int, multi_worker: bool = False) -> tf.distribute.Strategy:
    """The strategy for ``replicas`` devices: the default one for 1, else a
    ``MirroredStrategy`` over ``replicas`` GPUs or logical CPUs; with
    ``multi_worker``, :func:`start_multi_worker`'s (every device of every
    worker).

    Raises:
        ValueError: Fewer devices than ``replicas`` exist, or ``replicas`` > 1
            with ``multi_worker``.
    """
    check_replicas(replicas)
    if multi_worker:
        if replicas != 1:
            raise ValueError(
                "replicas and multi_worker exclude each other: a worker trains on all "
                f"its devices. Received: replicas={replicas}, multi_worker=True"
            )
        return start_multi_worker()
    if replicas == 1:
        return tf.distribute.get_strategy()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    if len(devices) < replicas:
        kind = devices[0].device_type if devices else "CPU"
        raise ValueError(
            f"{replicas} replicas need {replicas} devices, found {len(devices)} {kind} "
            f"(call configure_cpu_replicas({replicas}) before TensorFlow starts). "
            f"Received: replicas={replicas}"
        )
    return tf.distribute.MirroredStrategy([d.name for d in devices[:replicas]])
