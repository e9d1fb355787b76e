"""A model's repeated blocks, read from its matrices' tag names.

Transformers and other deep models repeat one block
(``transformer_layer_0`` .. ``transformer_layer_11``): the verdict compares
each kind of matrix with its peers along the blocks, and the Gradient-flow
tab groups its rows by block. Both read the blocks from here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# A block is a path component ``<stem>_<index>`` holding matrices
# (``transformer_layer_3`` in ``transformer_layer_3/self_attention/query``).
_NUMBERED = re.compile(r"(.+)_(\d+)")
# A repeated structure needs as many kinds of matrix shared by two blocks
# or more: a stack of single-matrix layers (``hidden_1`` .. ``hidden_5``,
# stacked LSTMs' ``lstm_1/recurrent_kernel``) keeps the output-layer rule.
BLOCK_MIN_KINDS = 2
# Names of embedding tables (and heads stored as one): never judged as a
# hidden layer (docs/verdict.md, "What an embedding's mean |g| means").
EMBEDDINGS = "embeddings"


@dataclass(frozen=True)
class BlockStructure:
    """The repeated blocks of a model, read from its matrices' tag names.

    Attributes:
        families: ``{family: {kind: {index: tag name}}}``. A family is the
            blocks' path with the index removed (``transformer_layer``), a
            kind a matrix's path inside its block (``self_attention/query``);
            only the kinds that two blocks or more hold are kept.
        labels: ``{(family, index): block name}`` (``transformer_layer_3``).
    """

    families: dict[str, dict[str, dict[int, str]]]
    labels: dict[tuple[str, int], str]

    @property
    def blocks(self) -> list[tuple[str, int]]:
        """Every block: family by family in model order, the input side first."""
        order = list(self.families)
        return sorted(self.labels, key=lambda block: (order.index(block[0]), block[1]))

    @property
    def members(self) -> dict[str, tuple[str, int]]:
        """``{tag name: (family, index)}`` of the matrices judged."""
        return {
            name: (family, index)
            for family, kinds in self.families.items()
            for by_index in kinds.values()
            for index, name in by_index.items()
        }

    def top(self, family: str) -> str:
        """The name of ``family``'s block nearest the output."""
        return self.labels[(family, max(i for f, i in self.labels if f == family))]


def block_structure(names: Sequence[str]) -> BlockStructure | None:
    """The repeated blocks among ``names``, or None for a model without.

    A block is a path component ``<stem>_<index>`` that is not a name's last
    (``transformer_layer_3/self_attention/query``; a bare ``<stem>`` beside
    ``<stem>_1``, ``<stem>_2`` is block 0, as Keras numbers layers). A family
    of blocks (one stem under one parent path) makes a block model when at
    least :data:`BLOCK_MIN_KINDS` kinds of matrix are held by two blocks or
    more. Embeddings are never members; a name's outermost qualifying
    block holds it.

    Args:
        names: The matrices' tag names in model order, the reference left
            out (it is not judged).

    Example:
        >>> block_structure(["t_0/query", "t_0/ffn", "t_1/query", "t_1/ffn"]).families
        {'t': {'query': {0: 't_0/query', 1: 't_1/query'}, 'ffn': {0: 't_0/ffn', 1: 't_1/ffn'}}}
    """
    places = {name: block_places(name) for name in names if not name.endswith(EMBEDDINGS)}
    numbered: dict[str, set[int]] = {}
    for found in places.values():
        for family, index, _, _ in found:
            if index is not None:
                numbered.setdefault(family, set()).add(index)
    # A bare <stem> is block 0 of a family numbered from 1, as Keras names
    # layers (transformer_block, transformer_block_1, ...).
    places = {
        name: [
            (family, 0 if index is None else index, kind, label)
            for family, index, kind, label in found
            if index is not None or 0 not in numbered.get(family, {0})
        ]
        for name, found in places.items()
    }
    held: dict[str, dict[str, set[int]]] = {}
    for found in places.values():
        for family, index, kind, _ in found:
            held.setdefault(family, {}).setdefault(kind, set()).add(index)
    shared = {f: {k for k, at in kinds.items() if len(at) >= 2} for f, kinds in held.items()}
    families: dict[str, dict[str, dict[int, str]]] = {}
    labels: dict[tuple[str, int], str] = {}
    for name, found in places.items():
        for family, index, kind, label in found:
            if len(shared[family]) >= BLOCK_MIN_KINDS and kind in shared[family]:
                families.setdefault(family, {}).setdefault(kind, {})[index] = name
                labels[(family, index)] = label
                break
    return BlockStructure(families, labels) if families else None


def block_places(name: str) -> list[tuple[str, int | None, str, str]]:
    """``(family, index, kind, block name)`` of each component of ``name``
    but its last, the outermost first: ``<stem>_<index>`` is block ``index``
    of family ``<parent>/<stem>``; a bare component has index None."""
    parts = name.split("/")
    out = []
    for p, part in enumerate(parts[:-1]):
        numbered = _NUMBERED.fullmatch(part)
        stem, index = (numbered[1], int(numbered[2])) if numbered else (part, None)
        family = "/".join([*parts[:p], stem])
        out.append((family, index, "/".join(parts[p + 1 :]), "/".join(parts[: p + 1])))
    return out


def outermost_block(name: str) -> tuple[str, int, str, str] | None:
    """The outermost numbered block of ``name`` (see :func:`block_places`), or None."""
    return next((place for place in block_places(name) if place[1] is not None), None)
