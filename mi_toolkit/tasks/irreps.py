"""Real irreducible representations of finite groups, and their character table.

- S_n (any group built by :func:`~mi_toolkit.tasks.groups.symmetric`): Young's orthogonal form, one irrep per
  partition of n, named ``"(4,1)"``; all are real, orthogonal and exact up to float64 rounding.
- Any other group: split the regular representation with a random symmetric element of its commutant (the right
  regular action): each eigenspace of that element is an irreducible subspace, and eigenspaces with the same
  character are the same irrep. The matrices are ``V^T R(g) V`` for an orthonormal basis ``V`` of one eigenspace.

An irreducible *complex* representation of complex type (its character is not real, e.g. the rotations of C_n)
appears once, as the real representation of twice its dimension formed by it and its conjugate (for C_n: the 2x2
rotation by ``2 pi k / n``, the Fourier frequency k). Its ``character`` is the trace of the real matrices,
``2 Re chi``, and its ``kind`` is ``"complex"``; ``"quaternionic"`` likewise for quaternionic type. Real-type irreps
have ``kind == "real"``. The real irreps' dimensions satisfy ``sum(dim^2 / m) = order`` with m = 1, 2, 4 by kind.
"""

import dataclasses
import functools
import math

import torch
from torch import Tensor

__all__ = ["Irrep", "character_table", "irreps_of", "partitions", "standard_tableaux"]

_KINDS = {1: "real", 2: "complex", 4: "quaternionic"}
_FROBENIUS_SCHUR = {1: 1, 2: 0, 4: -2}  # <chi, chi> -> mean chi(g^2) of an irreducible real representation


@dataclasses.dataclass(frozen=True, eq=False)
class Irrep:
    """One real irreducible representation: ``matrices[g]`` is the real orthogonal matrix of element ``g``."""

    name: str
    matrices: Tensor
    """``[order, dim, dim]`` float64, ``matrices[table[g, h]] == matrices[g] @ matrices[h]``."""
    kind: str = "real"
    """``"real"``, ``"complex"`` or ``"quaternionic"``: the type of the complex irreducible inside (module doc)."""

    @property
    def dim(self) -> int:
        return self.matrices.shape[-1]

    @functools.cached_property
    def character(self) -> Tensor:
        """``[order]`` float64: the trace of each element's matrix."""
        return self.matrices.diagonal(dim1=1, dim2=2).sum(-1)

    @property
    def endomorphism_dim(self) -> int:
        """1, 2 or 4 for real, complex, quaternionic type: ``<chi, chi>`` of the real character."""
        return {v: k for k, v in _KINDS.items()}[self.kind]

    def __repr__(self) -> str:
        return f"Irrep({self.name}, dim={self.dim}, kind={self.kind})"


def irreps_of(group) -> list[Irrep]:
    """Every real irreducible representation of ``group``, the trivial one first (see the module doc)."""
    if _is_symmetric(group):
        return _young_irreps(group)
    return _split_regular(group)


def character_table(group) -> tuple[list[str], list[list[int]], Tensor]:
    """``(irrep names, conjugacy classes, table)``: ``table[i, c]`` is irrep i's real character on class c."""
    classes = group.conjugacy_classes()
    reps = torch.tensor([c[0] for c in classes])
    irreps = group.irreps()
    return [r.name for r in irreps], classes, torch.stack([r.character[reps] for r in irreps])


# --- S_n: Young's orthogonal form ---------------------------------------------------------------------------------

def partitions(n: int) -> list[tuple[int, ...]]:
    """Partitions of n in reverse lexicographic order: ``(n,)`` first, ``(1,) * n`` last."""
    def rec(left: int, largest: int):
        if left == 0:
            yield ()
            return
        for part in range(min(left, largest), 0, -1):
            for rest in rec(left - part, part):
                yield (part, *rest)
    return list(rec(n, n))


def standard_tableaux(shape: tuple[int, ...]) -> list[tuple[tuple[int, int], ...]]:
    """Standard Young tableaux of ``shape``, each as the (row, column) of the entries 0..n-1."""
    if sum(shape) == 0:
        return [()]
    out = []
    for row, length in enumerate(shape):
        if length and (row + 1 == len(shape) or shape[row + 1] < length):  # a removable corner
            smaller = tuple(v - (i == row) for i, v in enumerate(shape))
            smaller = tuple(v for v in smaller if v)
            out += [(*t, (row, length - 1)) for t in standard_tableaux(smaller)]
    return out


def _young_generator(tableaux: list, i: int) -> Tensor:
    """Young's orthogonal form of the transposition of i and i+1."""
    index = {t: a for a, t in enumerate(tableaux)}
    m = torch.zeros(len(tableaux), len(tableaux), dtype=torch.float64)
    for a, t in enumerate(tableaux):
        (r1, c1), (r2, c2) = t[i], t[i + 1]
        if r1 == r2:
            m[a, a] = 1.0
        elif c1 == c2:
            m[a, a] = -1.0
        else:
            axial = (c2 - r2) - (c1 - r1)
            m[a, a] = 1.0 / axial
            swapped = list(t)
            swapped[i], swapped[i + 1] = t[i + 1], t[i]
            m[index[tuple(swapped)], a] = math.sqrt(1.0 - 1.0 / axial**2)
    return m


def _is_symmetric(group) -> bool:
    els = group.elements
    if not els or not isinstance(els[0], tuple) or not all(isinstance(v, int) for v in els[0]):
        return False
    n = len(els[0])
    return group.order == math.factorial(n) and all(sorted(e) == list(range(n)) for e in els[:1])


def _young_irreps(group) -> list[Irrep]:
    n = len(group.elements[0])
    generators = [group.index(tuple(i + 1 if k == i else i if k == i + 1 else k for k in range(n)))
                  for i in range(n - 1)]
    order = _bfs_words(group, generators)  # (element, generator, parent) so that element = generator * parent
    irreps = []
    for shape in partitions(n):
        tableaux = standard_tableaux(shape)
        gens = [_young_generator(tableaux, i) for i in range(n - 1)]
        mats = torch.empty(group.order, len(tableaux), len(tableaux), dtype=torch.float64)
        mats[group.identity] = torch.eye(len(tableaux), dtype=torch.float64)
        for element, gen, parent in order:
            mats[element] = gens[gen] @ mats[parent]
        irreps.append(Irrep("(" + ",".join(map(str, shape)) + ")", mats))
    return irreps


def _bfs_words(group, generators: list[int]) -> list[tuple[int, int, int]]:
    seen, frontier, steps = {group.identity}, [group.identity], []
    while frontier:
        nxt = []
        for parent in frontier:
            for g, gen in enumerate(generators):
                element = int(group.table[gen, parent])
                if element not in seen:
                    seen.add(element)
                    steps.append((element, g, parent))
                    nxt.append(element)
        frontier = nxt
    if len(seen) != group.order:
        raise ValueError(f"the generators do not generate {group.name}")
    return steps


# --- any group: split the regular representation ------------------------------------------------------------------

def _split_regular(group, seed: int = 0, tries: int = 5) -> list[Irrep]:
    n, table = group.order, group.table
    for attempt in range(tries):
        gen = torch.Generator().manual_seed(seed + attempt)
        c = torch.randn(n, generator=gen, dtype=torch.float64)
        c = c + c[group.inverse]  # c(h) = c(h^-1): a symmetric element of the commutant
        m = c[table[group.inverse]]  # m[a, b] = c(a^-1 b): commutes with left multiplication
        values, vectors = torch.linalg.eigh(m)
        gaps = (values[1:] - values[:-1]) > 1e-7 * values.abs().max().clamp_min(1.0)
        bounds = [0, *(gaps.nonzero().squeeze(1) + 1).tolist(), n]
        found: list[tuple[Tensor, Tensor]] = []  # (character, basis) per isomorphism class
        ok = True
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            v = vectors[:, lo:hi]
            character = (v[table] * v[None]).sum(dim=(1, 2))  # chi(g) = sum_h <V[g h], V[h]>
            norm = round(float(character.pow(2).mean()))
            # Frobenius-Schur indicator mean chi(g^2): 1, 0, -2 for real, complex, quaternionic type. Two irreducible
            # subspaces that share an eigenvalue fail one of the two tests: try another element then.
            indicator = round(float(character[table.diagonal()].mean()))
            if _FROBENIUS_SCHUR.get(norm) != indicator:
                ok = False
                break
            if not any(torch.allclose(character, other, atol=1e-6) for other, _ in found):
                found.append((character, v))
        if ok and sum(v.shape[1] ** 2 / round(float(ch.pow(2).mean())) for ch, v in found) == n:
            return _name(group, [Irrep("", torch.einsum("ghi,hj->gij", v[table], v),
                                       _KINDS[round(float(ch.pow(2).mean()))]) for ch, v in found])
    raise RuntimeError(f"could not split the regular representation of {group.name} in {tries} tries")


def _name(group, irreps: list[Irrep]) -> list[Irrep]:
    """Trivial first, then by dimension; cyclic groups name irreps by frequency (``"k=3"``), others ``"2a"``."""
    trivial = [r for r in irreps if r.dim == 1 and torch.allclose(r.character, torch.ones_like(r.character))]
    rest = sorted((r for r in irreps if r not in trivial), key=lambda r: (r.dim, -float(r.character.sum())))
    ordered = trivial + rest
    n = group.order
    ar = torch.arange(n)
    if torch.equal(group.table, (ar[:, None] + ar[None, :]) % n):  # the cyclic group, elements 0..n-1 in order
        names = []
        for r in ordered:
            cos = float(r.character[1 % n]) / r.dim  # chi(1) = dim * cos(2 pi k / n)
            names.append(f"k={round(math.acos(max(-1.0, min(1.0, cos))) * n / (2 * math.pi))}")
        ordered = sorted((dataclasses.replace(r, name=nm) for r, nm in zip(ordered, names)),
                         key=lambda r: int(r.name[2:]))
        return ordered
    counts: dict[int, int] = {}
    named = []
    for r in ordered:
        letter = counts.get(r.dim, 0)
        counts[r.dim] = letter + 1
        named.append(dataclasses.replace(r, name="trivial" if r in trivial else f"{r.dim}{chr(ord('a') + letter)}"))
    return named
