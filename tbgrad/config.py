"""Run configurations and the presets of the reference studies.

A :class:`RunConfig` holds everything one training run needs; ``scripts/
train.py`` fills it from flags (a ``--preset`` first, explicit flags over
it), :func:`tbgrad.experiment.run` trains it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from tbgrad.data import DATASETS
from tbgrad.distribute import check_replicas
from tbgrad.gradient_tensorboard import validate_update_freq
from tbgrad.models import OPTIMIZERS, check_activation, is_finite_number, make_initializer

LOOPS = ("fit", "tape")


@dataclass(frozen=True)
class RunConfig:
    """One training run. Defaults are study A's setup (5 hidden x 5, SGD)."""

    act: str = "relu"
    init: str = "he_uniform"
    output_init: str | None = None
    depth: int = 5
    width: int = 5
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float | None = None
    epochs: int = 500
    batch_size: int = 32
    dataset: str = "circles-a"
    loop: str = "fit"
    seed: int = 1
    histogram_freq: int = 1
    update_freq: str | int = "epoch"
    preset: str | None = None
    # Op determinism on top of the seeds: identical logged values run to run.
    deterministic: bool = False
    # Devices to train on (MirroredStrategy when > 1); batch_size is global.
    replicas: int = 1

    @property
    def learning_rate(self) -> float:
        """The learning rate used: ``lr`` or the optimizer's default."""
        if self.lr is not None:
            return self.lr
        return 0.01 if self.optimizer == "sgd" else 0.001

    @property
    def momentum_value(self) -> float:
        """The momentum used: ``momentum`` or 0.9 for SGD (study A), else 0."""
        if self.momentum is not None:
            return self.momentum
        return 0.9 if self.optimizer == "sgd" else 0.0

    def run_name(self) -> str:
        """A name derived from the config, e.g. ``tanh-uniform01-d5-w5-sgd-s1``.

        A preset prefixes its name; the tape loop adds ``-tape``.
        """
        parts = [self.act, self.init, f"d{self.depth}", f"w{self.width}", self.optimizer]
        if self.lr is not None and self.lr != replace(self, lr=None).learning_rate:
            parts.append(f"lr{self.lr:g}")
        parts.append(f"s{self.seed}")
        if self.loop != "fit":
            parts.append(self.loop)
        if self.replicas != 1:
            parts.append(f"r{self.replicas}")
        if self.preset:
            parts.insert(0, self.preset)
        return "-".join(parts)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["learning_rate"] = self.learning_rate
        out["momentum_value"] = self.momentum_value
        return out

    def validate(self) -> RunConfig:
        """Returns self, or raises ValueError naming the bad value and the choices."""
        check_activation(self.act)
        make_initializer(self.init)
        if self.output_init is not None:
            make_initializer(self.output_init)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("dataset", self.dataset, DATASETS)
        _choice("loop", self.loop, LOOPS)
        for name in ("depth", "width", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
        if self.lr is not None and not (is_finite_number(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number. Received: lr={self.lr!r}")
        if self.momentum is not None and not (
            is_finite_number(self.momentum) and 0 <= self.momentum < 1
        ):
            raise ValueError(f"momentum must be in [0, 1). Received: momentum={self.momentum!r}")
        if self.optimizer == "adam" and self.momentum:
            raise ValueError(
                "momentum applies to sgd and rmsprop, not adam. "
                f"Received: optimizer='adam', momentum={self.momentum!r}"
            )
        if (
            isinstance(self.histogram_freq, bool)
            or not isinstance(self.histogram_freq, int)
            or self.histogram_freq < 0
        ):
            raise ValueError(
                "histogram_freq must be >= 0 (0: no histograms). "
                f"Received: histogram_freq={self.histogram_freq!r}"
            )
        validate_update_freq(self.update_freq)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0. Received: seed={self.seed!r}")
        if not isinstance(self.deterministic, bool):
            raise TypeError(
                "deterministic must be True or False. "
                f"Received: deterministic={self.deterministic!r}"
            )
        check_replicas(self.replicas)
        return self


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(
            f"Unknown {name} {value!r}; valid choices: {', '.join(choices)}. "
            f"Received: {name}={value!r}"
        )


_A = dict(
    optimizer="sgd", lr=0.01, momentum=0.9, epochs=500, batch_size=32, dataset="circles-a", width=5
)
_B = dict(
    depth=4,
    width=5,
    init="normal",
    optimizer="rmsprop",
    epochs=100,
    batch_size=32,
    dataset="circles-b",
    seed=42,
)

# The configurations of the reference studies (see docs/results.md).
PRESETS: dict[str, dict] = {
    "A1": dict(_A, depth=1, act="tanh", init="uniform01"),
    "A2": dict(_A, depth=5, act="tanh", init="uniform01"),
    "A3": dict(_A, depth=5, act="relu", init="he_uniform"),
    "A4": dict(_A, depth=15, act="relu", init="he_uniform"),
    "A5": dict(_A, depth=20, act="relu", init="he_uniform"),
    "B-sigmoid": dict(_B, act="sigmoid"),
    "B-tanh": dict(_B, act="tanh"),
    "B-relu": dict(_B, act="relu"),
}

PRESET_DESCRIPTIONS = {
    "A1": "1 hidden tanh layer, RandomUniform(0, 1), SGD 0.01 m0.9, 500 epochs",
    "A2": "5 hidden tanh layers, RandomUniform(0, 1): vanishing gradients",
    "A3": "5 hidden relu layers, He uniform (output: Glorot): the fix",
    "A4": "15 hidden relu layers, He uniform: still learns",
    "A5": "20 hidden relu layers, He uniform: no longer learns",
    "B-sigmoid": "4 hidden sigmoid layers, RandomNormal(0, 1), RMSprop, 100 epochs",
    "B-tanh": "4 hidden tanh layers, RandomNormal(0, 1), RMSprop, 100 epochs",
    "B-relu": "4 hidden relu layers, RandomNormal(0, 1), RMSprop, 100 epochs",
}


def make_config(preset: str | None = None, **overrides) -> RunConfig:
    """Builds a validated config: defaults, then ``preset``, then ``overrides``.

    ``overrides`` whose value is None are ignored, so unset CLI flags leave
    the preset's values alone.
    """
    values: dict = {}
    if preset is not None:
        _choice("preset", preset, tuple(PRESETS))
        values.update(PRESETS[preset])
        values["preset"] = preset
    names = {f.name for f in fields(RunConfig)}
    for key, value in overrides.items():
        if key not in names:
            raise TypeError(
                f"Unknown config field {key!r}; valid fields: {', '.join(sorted(names))}. "
                f"Received: {key}={value!r}"
            )
        if value is not None:
            values[key] = value
    return replace(RunConfig(), **values).validate()
