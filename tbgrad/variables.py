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
MATRICES = "matrices"  # the default
KERNELS = "kernels"
ALL = "all"


@dataclass(frozen=True)
class KernelLayer:
    """A variable tbgrad logs: its tag name and the variable.

    ``kernel`` is the variable logged: every weight matrix by default, any
    trainable variable with ``variables="all"`` or a predicate (see
    :func:`tracked_variables`). ``is_kernel`` says whether it is its layer's
    kernel (named by the layer alone).
    """

    name: str
    kernel: keras.Variable
    is_kernel: bool = True

    @property
    def is_matrix(self) -> bool:
        """A weight matrix (a kernel, or any variable of two or more
        dimensions): what the ratios and the verdict compare."""
        return self.is_kernel or is_weight_matrix(self.kernel)


def kernel_layers(model: keras.Model) -> list[KernelLayer]:
    """Returns the layers of ``model`` (nested ones included) that have a kernel.

    The same as ``tracked_variables(model, "kernels")``.
    """
    return tracked_variables(model, KERNELS)


def tracked_variables(model: keras.Model, variables=MATRICES) -> list[KernelLayer]:
    """Returns the trainable variables of ``model`` that tbgrad logs, named.

    Args:
        model: A built Keras model (nested and subclassed models included).
        variables: ``"matrices"`` (the default: every trainable weight
            matrix, i.e. every variable of two or more dimensions that is
            not a bias: kernels, embeddings and language-model heads,
            recurrent kernels, LoRA factors; not normalisation scales or
            other vectors), ``"kernels"``
            (every layer's trainable ``kernel`` only), ``"all"`` (every
            trainable variable) or a predicate ``callable(variable) -> bool``
            over the trainable variables.

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
        if _selected(variables, var, is_kernel)
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


def output_matrix(model: keras.Model, layers: list[KernelLayer], name: str | None = None):
    """The index in ``layers`` of the matrix that produces the model's output:
    the reference the ratios and the verdict compare every layer with.

    Found from the model's graph, not from its order: from the (first)
    output back towards the inputs, the first layer holding a tracked weight
    matrix, and its last one (a language model's head, tied to the token
    embedding or not; a classifier's dense; under LoRA, with the head
    frozen, the trainable matrix nearest the output). A nested functional
    model is walked inside. A subclassed model has no graph to walk: its
    last matrix in model order. ``name`` (a tracked variable's tag name)
    overrides it. None when no matrix is tracked.
    """
    matrices = {id(layer.kernel): i for i, layer in enumerate(layers) if layer.is_matrix}
    if name is not None:
        names = [layer.name for layer in layers if layer.is_matrix]
        if name not in names:
            raise ValueError(
                f"reference={name!r} is not a tracked weight matrix; choose one of "
                f"{', '.join(names) or '(none)'}"
            )
        return next(i for i, layer in enumerate(layers) if layer.name == name)
    if not matrices:
        return None
    queue = _compat.symbolic_outputs(model)[:1]
    seen: set[int] = set()
    while queue:
        found = _compat.producer(queue.pop(0))
        if found is None or id(found[0]) in seen:
            continue
        operation, inputs = found
        seen.add(id(operation))
        inner = _compat.symbolic_outputs(operation) if isinstance(operation, keras.Model) else []
        if inner:
            # A nested model: its own graph first, then what it was called on.
            queue = inner[:1] + queue + inputs
            continue
        held = [matrices[id(v)] for v in getattr(operation, "weights", []) if id(v) in matrices]
        if held:
            return held[-1]
        queue.extend(inputs)
    return max(matrices.values())


def is_weight_matrix(var) -> bool:
    """Whether ``var`` is a weight matrix: two or more dimensions and not a
    bias (a multi-head attention's bias is ``[heads, head_dim]``)."""
    return len(var.shape) >= 2 and not var.name.endswith("bias")


def is_embedding(var) -> bool:
    """Whether ``var`` is an embedding table (or a language-model head
    stored as one): ``embeddings``, ``reverse_embeddings``,
    ``position_embeddings``, ..."""
    return var.name.endswith("embeddings")


def _selected(variables, var, is_kernel: bool) -> bool:
    if variables == MATRICES:
        return KernelLayer("", var, is_kernel).is_matrix
    if variables == KERNELS:
        return is_kernel
    return variables == ALL or bool(variables(var))


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
