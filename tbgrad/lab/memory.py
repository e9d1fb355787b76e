"""What logging gradients costs in memory, on a model of over 20M parameters.

Two figures per variant, each from a fresh process (peak RSS only grows):

* the bytes of every variable tbgrad's statistics keep between steps (their
  persistent state), against the model's parameter bytes;
* the peak resident set size of the whole ``model.fit``, and how far it
  rose above the process's size just before ``fit`` (the model and data
  built), against plain ``fit``'s, with plain ``fit`` run twice (A/A) for
  the noise.

The variants alternate by repeat, as the timing benchmark's do.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence

import numpy as np

MEMORY_VARIANTS = ("fit", "fit(A/A)", "fit+tbgrad", "fit+tbgrad(diag1)", "fit+keras_tb")
FEATURES, WIDTH, DEPTH, CLASSES = 256, 2048, 6, 10
SAMPLES, BATCH, EPOCHS = 2048, 64, 2


def parameters() -> int:
    """The benchmark model's parameter count (21.5M)."""
    sizes = [FEATURES] + [WIDTH] * DEPTH + [CLASSES]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def _model():
    import keras

    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(WIDTH, "relu", name=f"hidden_{i}") for i in range(1, DEPTH + 1)]
    model = keras.Sequential(
        [keras.Input((FEATURES,)), *layers, keras.layers.Dense(CLASSES, name="output")]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _callback(variant: str, log_dir: str):
    import keras

    import tbgrad

    if variant == "fit+tbgrad":
        return tbgrad.TensorBoard(log_dir)
    if variant == "fit+tbgrad(diag1)":
        return tbgrad.TensorBoard(log_dir, diagnostics_every=1)
    if variant == "fit+keras_tb":
        return keras.callbacks.TensorBoard(log_dir, histogram_freq=1)
    return None


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(variant: str) -> dict:
    """One variant's figures, in this process (call it in a fresh one)."""
    model = _model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, size=SAMPLES)
    with tempfile.TemporaryDirectory() as log_dir:
        callback = _callback(variant, log_dir)
        before = _rss_mb()
        model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=EPOCHS,
            verbose=0,
            callbacks=[callback] if callback else [],
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    collector = getattr(callback, "collector", None)
    state = collector.variables if collector is not None else []
    return {
        "variant": variant,
        "state_variables": len(state),
        "state_bytes": int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in state)),
        "rss_before_fit_mb": before,
        "peak_rss_mb": peak,
    }


def bench_memory(repeats: int, progress: Callable[[str], None] = print) -> list[dict]:
    """Every variant ``repeats`` times, each in a fresh process; the medians."""
    runs: dict[str, list[dict]] = {v: [] for v in MEMORY_VARIANTS}
    for r in range(repeats):
        shift = r % len(MEMORY_VARIANTS)
        order = MEMORY_VARIANTS[shift:] + MEMORY_VARIANTS[:shift]
        for variant in order:
            progress(f"memory repeat {r + 1}/{repeats}: {variant}")
            code = (
                "import json; from tbgrad.lab.memory import measure; "
                f"print(json.dumps(measure({variant!r})))"
            )
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return _rows(runs)


def _rows(runs: dict[str, list[dict]]) -> list[dict]:
    def median(variant, key):
        return float(np.median([run[key] for run in runs[variant]]))

    param_bytes = parameters() * 4
    base_rise = median("fit", "peak_rss_mb") - median("fit", "rss_before_fit_mb")
    rows = []
    for variant in MEMORY_VARIANTS:
        rise = median(variant, "peak_rss_mb") - median(variant, "rss_before_fit_mb")
        state = median(variant, "state_bytes")
        rows.append(
            {
                "variant": variant,
                "peak_rss_mb": median(variant, "peak_rss_mb"),
                "rise_mb": rise,
                "extra_rise_mb": rise - base_rise,
                "extra_rise_share": (rise - base_rise) * 2**20 / param_bytes,
                "state_bytes": state,
                "state_share": state / param_bytes,
                "runs": len(runs[variant]),
            }
        )
    return rows


def format_memory_table(rows: Sequence[dict]) -> str:
    lines = [
        f"model: {DEPTH} x {WIDTH} relu MLP, {parameters() / 1e6:.1f}M parameters "
        f"({parameters() * 4 / 2**20:.0f} MB float32), batch {BATCH}, {EPOCHS} epochs",
        f"{'variant':20s} {'peak RSS':>9s} {'rise in fit':>12s} {'over fit':>9s} "
        f"{'of params':>9s} {'tbgrad state':>13s} {'of params':>9s}",
    ]
    for r in rows:
        lines.append(
            f"{r['variant']:20s} {r['peak_rss_mb']:7.0f}MB {r['rise_mb']:10.0f}MB "
            f"{r['extra_rise_mb']:+7.0f}MB {100 * r['extra_rise_share']:+8.1f}% "
            f"{r['state_bytes'] / 1024:11.1f}kB {100 * r['state_share']:8.4f}%"
        )
    return "\n".join(lines)


__all__ = ["MEMORY_VARIANTS", "bench_memory", "format_memory_table", "measure", "parameters"]
