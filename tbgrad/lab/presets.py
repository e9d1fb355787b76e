"""The configurations of the two reference studies, as plain data.

Study A fixes vanishing gradients with ReLU (SGD, 500 epochs); study B
visualizes them with RandomNormal(0, 1) weights (RMSprop, 100 epochs). Each
preset is a mapping of :class:`tbgrad.lab.config.RunConfig` fields;
docs/results.md reports what they reproduce.
"""

from __future__ import annotations

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
