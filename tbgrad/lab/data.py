"""The two-circles data sets of the reference studies.

* ``circles-a`` (study A, the default): ``make_circles(n_samples=1000,
  noise=0.1, random_state=1)``, rescaled to [-1, 1] with a ``MinMaxScaler``
  fitted on all 1000 points; the first 500 rows train, the last 500 test (the
  test half is also the validation data).
* ``circles-b`` (study B): ``make_circles(n_samples=1000, factor=0.5,
  noise=0.1, random_state=42)``, no split: accuracy is measured on the
  training data, which is also the validation data.

The data do not depend on the training seed, so runs with different seeds
see the same points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import make_circles
from sklearn.preprocessing import MinMaxScaler

from tbgrad.lab.choices import DATASETS


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays (float32 inputs, float32 0/1 labels)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def input_dim(self) -> int:
        return int(self.x_train.shape[1])


def load_dataset(name: str = "circles-a") -> Dataset:
    """Returns the data set ``name``, one of :data:`DATASETS`.

    Example:
        >>> data = load_dataset("circles-a")
        >>> data.x_train.shape, data.x_test.shape
        ((500, 2), (500, 2))
    """
    if name == "circles-a":
        x, y = make_circles(n_samples=1000, noise=0.1, random_state=1)
        x = MinMaxScaler(feature_range=(-1, 1)).fit_transform(x)
        x, y = x.astype("float32"), y.astype("float32")
        return Dataset(name, x[:500], y[:500], x[500:], y[500:])
    if name == "circles-b":
        x, y = make_circles(n_samples=1000, factor=0.5, noise=0.1, random_state=42)
        x, y = x.astype("float32"), y.astype("float32")
        return Dataset(name, x, y, x, y)
    raise ValueError(
        f"Unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}. Received: name={name!r}"
    )
