"""The names the lab accepts: data sets, loops, optimizers, activations,
initializers. Plain data, importable without TensorFlow, so that the command
line checks its flags before TensorFlow loads.

``KERAS_ACTIVATIONS`` and ``KERAS_INITIALIZERS`` are Keras 3's public names
(``dir(keras.activations)``, ``dir(keras.initializers)``, less ``Constant``,
which cannot be made from its name alone); tests/lab/test_choices.py fails
when a Keras release changes them.
"""

from __future__ import annotations

DATASETS = ("circles-a", "circles-b")
LOOPS = ("fit", "tape")
# local: one process (MirroredStrategy with --replicas N); multi-worker:
# MultiWorkerMirroredStrategy over the processes TF_CONFIG names.
MULTI_WORKER = "multi-worker"
STRATEGIES = ("local", MULTI_WORKER)
OPTIMIZERS = ("sgd", "rmsprop", "adam")
# Study A's SGD rate; Keras's own default for the others.
DEFAULT_LEARNING_RATES = {"sgd": 0.01, "rmsprop": 0.001, "adam": 0.001}

# Each replica is a thread with its own copy of the model; more logical CPUs
# than this on one machine only adds overhead.
MAX_REPLICAS = 64

NAMED_ACTIVATIONS = ("sigmoid", "tanh", "relu")
# Short names for the initializers of the reference studies; any Keras
# initializer name (``glorot_normal``, ``lecun_uniform``, ...) works too.
INITIALIZER_ALIASES = {
    "uniform01": "RandomUniform(0, 1)",
    "normal": "RandomNormal(0, 1)",
    "xavier": "glorot_uniform",
    "standard": "U[-1/sqrt(fan_in), 1/sqrt(fan_in)] (Glorot & Bengio's 'standard')",
}
NAMED_INITIALIZERS = ("uniform01", "normal", "glorot_uniform", "xavier", "he_uniform", "standard")

KERAS_ACTIVATIONS = (
    "celu", "elu", "exponential", "gelu", "glu", "hard_shrink", "hard_sigmoid", "hard_silu",
    "hard_swish", "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "log_softmax", "mish",
    "relu", "relu6", "selu", "sigmoid", "silu", "soft_shrink", "softmax", "softplus",
    "softsign", "sparse_plus", "sparse_sigmoid", "sparsemax", "squareplus", "swish", "tanh",
    "tanh_shrink", "threshold",
)  # fmt: skip
KERAS_INITIALIZERS = (
    "GlorotNormal", "GlorotUniform", "HeNormal", "HeUniform", "Identity",
    "IdentityInitializer", "LecunNormal", "LecunUniform", "Ones", "Orthogonal",
    "OrthogonalInitializer", "RandomNormal", "RandomUniform", "STFT", "STFTInitializer",
    "TruncatedNormal", "VarianceScaling", "Zeros", "glorot_normal",
    "glorot_uniform", "he_normal", "he_uniform", "identity", "lecun_normal", "lecun_uniform",
    "ones", "orthogonal", "random_normal", "random_uniform", "stft", "truncated_normal",
    "variance_scaling", "zeros",
)  # fmt: skip


def check_activation(name: str) -> str:
    """Returns ``name`` if Keras knows the activation, else raises ValueError."""
    if name not in KERAS_ACTIVATIONS:
        _unknown("activation", "act", name, NAMED_ACTIVATIONS, "Keras activation")
    return name


def check_initializer(name: str, field: str = "init") -> str:
    """Returns ``name`` if it is an alias or a Keras initializer, else raises
    ValueError naming ``field`` (the argument that gave it)."""
    if name not in NAMED_INITIALIZERS and name not in KERAS_INITIALIZERS:
        _unknown("initializer", field, name, NAMED_INITIALIZERS, "Keras initializer")
    return name


def _unknown(kind: str, field: str, name, named, keras_kind: str):
    raise ValueError(
        f"Unknown {kind} {name!r}; valid choices: {', '.join(named)} or any "
        f"{keras_kind} name. Received: {field}={name!r}"
    )
