"""``GradientTensorBoard``: the former name of :class:`tbgrad.TensorBoard`.

The same class under its first name, so that code written for it keeps
working; new code uses ``tbgrad.TensorBoard`` (the name KerasTuner
recognises).
"""

from __future__ import annotations

from tbgrad.tensorboard import TensorBoard

GradientTensorBoard = TensorBoard

__all__ = ["GradientTensorBoard"]
