"""The MLP of the reference studies, with stable layer names.

Hidden layers are named ``hidden_1`` ... ``hidden_N`` and the output layer
``output``, so the same architecture gives the same TensorBoard tags in every
run and every process (Keras 3's automatic names drift: ``dense_7``).
"""

from __future__ import annotations

import keras

from tbgrad._validate import check_choice, check_int, check_positive_number, check_unit_interval
from tbgrad.lab.choices import (
    DEFAULT_LEARNING_RATES,
    OPTIMIZERS,
    check_activation,
    check_initializer,
)


def make_initializer(name: str, seed: int | None = None) -> keras.initializers.Initializer:
    """Returns a fresh Keras initializer for ``name``.

    ``uniform01`` is ``RandomUniform(0, 1)``, ``normal`` is
    ``RandomNormal(0, 1)``, ``xavier`` is ``glorot_uniform``, ``standard`` is
    Glorot & Bengio's U[-1/sqrt(fan_in), 1/sqrt(fan_in)]; any other name is
    looked up with ``keras.initializers.get``.
    """
    if name == "uniform01":
        return keras.initializers.RandomUniform(0.0, 1.0, seed=seed)
    if name == "normal":
        return keras.initializers.RandomNormal(0.0, 1.0, seed=seed)
    if name == "standard":
        # Var = 1/(3 fan_in): U[-1/sqrt(fan_in), 1/sqrt(fan_in)], the heuristic
        # Glorot & Bengio (2010) compare their normalized initialization with.
        return keras.initializers.VarianceScaling(
            scale=1.0 / 3.0, mode="fan_in", distribution="uniform", seed=seed
        )
    check_initializer(name)
    init = keras.initializers.get("glorot_uniform" if name == "xavier" else name)
    if seed is not None and hasattr(init, "seed"):
        config = init.get_config()
        config["seed"] = seed
        init = init.__class__.from_config(config)
    return init


def default_output_init(init: str) -> str:
    """The output layer's initializer when none is given.

    The output layer is a sigmoid unit: it keeps the hidden layers'
    initializer, except that He initializers (designed for relu) give way to
    Keras's default, ``glorot_uniform``, as in study A's A3 to A5.
    """
    return "glorot_uniform" if init.startswith("he_") else init


def build_mlp(
    depth: int = 5,
    width: int = 5,
    activation: str = "relu",
    init: str = "he_uniform",
    output_init: str | None = None,
    input_dim: int = 2,
    seed: int | None = None,
) -> keras.Sequential:
    """Builds ``input -> depth x Dense(width, activation) -> Dense(1, sigmoid)``.

    Args:
        depth: Number of hidden layers (>= 1).
        width: Units per hidden layer (>= 1).
        activation: Any Keras activation name.
        init: Kernel initializer of the hidden layers (see
            :func:`make_initializer`).
        output_init: Kernel initializer of the output layer; default
            :func:`default_output_init` of ``init``.
        input_dim: Number of input features.
        seed: Seed of the initializers (each layer gets ``seed + i``); None
            uses Keras's global seed (``keras.utils.set_random_seed``).

    Example:
        >>> model = build_mlp(depth=5, width=5, activation="tanh", init="uniform01")
        >>> [layer.name for layer in model.layers]
        ['hidden_1', 'hidden_2', 'hidden_3', 'hidden_4', 'hidden_5', 'output']
    """
    for label, value in (("depth", depth), ("width", width), ("input_dim", input_dim)):
        check_int(label, value, 1)
    check_activation(activation)
    output_init = output_init or default_output_init(init)

    def layer_seed(i):
        return None if seed is None else seed + i

    layers = [keras.Input((input_dim,), name="inputs")]
    for i in range(1, depth + 1):
        layers.append(
            keras.layers.Dense(
                width,
                activation=activation,
                kernel_initializer=make_initializer(init, layer_seed(i)),
                name=f"hidden_{i}",
            )
        )
    layers.append(
        keras.layers.Dense(
            1,
            activation="sigmoid",
            kernel_initializer=make_initializer(output_init, layer_seed(depth + 1)),
            name="output",
        )
    )
    return keras.Sequential(layers, name="mlp")


def make_optimizer(
    name: str, learning_rate: float | None = None, momentum: float = 0.0
) -> keras.optimizers.Optimizer:
    """Returns a new optimizer (never share one across models in Keras 3).

    Args:
        name: ``sgd``, ``rmsprop`` or ``adam``.
        learning_rate: None takes the default: 0.01 for SGD (study A), Keras's
            0.001 for RMSprop and Adam.
        momentum: SGD's and RMSprop's momentum.
    """
    check_choice("optimizer", name, OPTIMIZERS)
    if learning_rate is not None:
        check_positive_number("learning_rate", learning_rate)
    check_unit_interval("momentum", momentum)
    lr = DEFAULT_LEARNING_RATES[name] if learning_rate is None else learning_rate
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    optimizer = keras.optimizers.SGD if name == "sgd" else keras.optimizers.RMSprop
    return optimizer(learning_rate=lr, momentum=momentum)
