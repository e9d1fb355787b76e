"""Which variables tbgrad logs, and the names their tags use.

:func:`tracked_variables` walks a model's layers (nested and subclassed ones
included) and names each trainable variable it selects; every statistic of
:mod:`tbgrad.statistics` is per tracked variable, in this order.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from tbgrad import _compat

# The ``variables=`` choices of the callback, GradientLogger and the tape loop.
KERNELS = "kernels"
ALL = "all"


@dataclass(frozen=True)
class KernelLayer:
    """A variable tbgrad logs: its tag name and the variable.

    ``kernel`` is the variable logged: a layer's kernel by default, any
    trainable variable with ``variables="all"`` or a predicate (see
    :func:`tracked_variables`). ``is_kernel`` says whether it is its layer's
    kernel (``grad_ratio`` compares the first and last of those).
    """

    name: str
    kernel: keras.Variable
    is_kernel: bool = True


def kernel_layers(model: keras.Model) -> list[KernelLayer]:
    """Returns the layers of ``model`` (nested ones included) that have a kernel.

    The same as ``tracked_variables(model, "kernels")``.
    """
    return tracked_variables(model, KERNELS)


def tracked_variables(model: keras.Model, variables=KERNELS) -> list[KernelLayer]:
    """Returns the trainable variables of ``model`` that tbgrad logs, named.

    Args:
        model: A built Keras model (nested and subclassed models included).
        variables: ``"kernels"`` (every layer's trainable ``kernel``),
            ``"all"`` (every trainable variable) or a predicate
            ``callable(variable) -> bool`` over the trainable variables.

    A layer's kernel is named by the layer (``dense_1``), its other variables
    by the layer and the variable (``lstm/recurrent_kernel``,
    ``embedding/embeddings``, ``dense_1/bias``). A recurrent layer's cell
    takes the recurrent layer's name (``lstm``, not ``lstm_cell``). Where two
    names collide (nested models with the same layer names), the variable's
    path is used instead (less its last part for a kernel), so names are
    unique and depend only on the model's layer and variable names.

    Example:
        >>> [v.name for v in tracked_variables(model, "all")]
        ['embedding/embeddings', 'lstm', 'lstm/recurrent_kernel', 'lstm/bias', ...]
    """
    found = [
        (name, var, is_kernel)
        for name, var, is_kernel in _candidates(model)
        if (is_kernel if variables == KERNELS else variables == ALL or variables(var))
    ]
    names = [_unique_name(name, var, is_kernel, found) for name, var, is_kernel in found]
    seen: dict[str, int] = {}
    out = []
    for name, (_, var, is_kernel) in zip(names, found):
        # A last resort against a name taken twice even by path.
        seen[name] = seen.get(name, 0) + 1
        name = name if seen[name] == 1 else f"{name}_{seen[name]}"
        out.append(KernelLayer(name=name, kernel=var, is_kernel=is_kernel))
    return out


def _candidates(model):
    # (name, variable, is_kernel) of every trainable variable, in the order
    # of a depth-first walk over the layers: each layer's kernel first, then
    # the other variables it holds itself (not through a sub-layer).
    aliases: dict[int, str] = {}
    seen: set[int] = set()
    for layer in (model, *_walk(model)):
        cell = getattr(layer, "cell", None)
        if isinstance(cell, keras.layers.Layer):
            # An RNN's cell holds its weights: name them by the RNN layer.
            aliases[id(cell)] = aliases.get(id(layer), layer.name)
        name = aliases.get(id(layer), layer.name)
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and getattr(kernel, "trainable", False) and id(kernel) not in seen:
            seen.add(id(kernel))
            yield name, kernel, True
        for var in _own_trainable_variables(layer):
            if id(var) not in seen:
                seen.add(id(var))
                yield name, var, False


def _own_trainable_variables(layer) -> list:
    inner = {id(v) for sub in _compat.sublayers(layer) for v in sub.trainable_weights}
    return [v for v in layer.trainable_weights if id(v) not in inner]


def _unique_name(name: str, var, is_kernel: bool, found) -> str:
    tag = name if is_kernel else f"{name}/{var.name}"
    taken = sum(1 for n, v, k in found if (n if k else f"{n}/{v.name}") == tag)
    if taken == 1:
        return tag
    return var.path.rsplit("/", 1)[0] if is_kernel else var.path


def _walk(layer):
    # Depth-first over tracked sub-layers, so subclassed models and nested
    # Sequential/functional models are covered as well as plain ones.
    for sub in _compat.sublayers(layer):
        yield sub
        yield from _walk(sub)
