"""The lab's static name lists agree with the installed Keras, and the command
line checks them without importing TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras

from tbgrad.lab import choices

ROOT = Path(__file__).resolve().parents[2]
_NOT_NAMES = {"get", "serialize", "deserialize", "Initializer"}


def _public(module) -> tuple[str, ...]:
    return tuple(sorted(n for n in dir(module) if not n.startswith("_") and n not in _NOT_NAMES))


def test_activation_names_are_keras_public_activations():
    assert choices.KERAS_ACTIVATIONS == _public(keras.activations)
    for name in choices.KERAS_ACTIVATIONS:
        keras.activations.get(name)


def test_initializer_names_are_keras_public_initializers():
    # Constant needs its value: Keras cannot make it from the name alone.
    assert choices.KERAS_INITIALIZERS == tuple(
        n for n in _public(keras.initializers) if n not in ("Constant", "constant")
    )
    for name in choices.KERAS_INITIALIZERS:
        keras.initializers.get(name)


def test_help_and_bad_flags_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "from tbgrad.cli import main\n"
        "for argv in (['train', '--act', 'tanhh'], ['train', '--depth', '0'], ['sweep', '--help'],"
        " ['report', '--help'], ['reproduce', '--help'], ['bench', '--help'], ['--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'sklearn') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
