"""The Fourier analysis of grokking, general over finite groups (Chughtai, Chan, Nanda 2023; Stander et al. 2024).

For a group G with real irreps rho, the matrix entries ``rho_ij(g)`` span orthogonal subspaces of the functions on
G, one per irrep, that together are all of them (the isotypic decomposition of the regular representation). An
orthonormal basis of each is the *group Fourier basis*; for the cyclic group C_p it is the ordinary Fourier basis
up to a rotation inside each frequency's (cos, sin) pair, so every measure here equals its
:mod:`mi_toolkit.analysis.fourier` counterpart on C_p.

- per-neuron irreps: the fraction of each neuron's variance over (x, y) in each irrep's 2-D components;
- logits against ``chi_rho(x y z^-1) = tr rho(x y z^-1)``: the share of logit variance per irrep, key irreps;
- restricted and excluded losses along the functions ``rho_ij(x y)`` of the key irreps (the cyclic case is
  ``cos/sin(w_k (a + b))``);
- coset concentration: for each neuron, the largest subgroup on whose cosets its pre-activation is constant.
"""

import dataclasses
import functools

import torch
from jaxtyping import Float
from torch import Tensor

from mi_toolkit.analysis.fourier import NeuronClusters, block_fractions, clusters_from_activations, neuron_activations
from mi_toolkit.analysis.progress import excluded_loss_on, restricted_loss_on
from mi_toolkit.core.activations import run_until
from mi_toolkit.core.tl import HookedTransformer, get_act_name

__all__ = ["GroupBasis", "IrrepLogits", "coset_concentration", "group_basis", "irrep_logit_shares",
           "irrep_norms", "neuron_irreps", "product_directions", "subgroups", "coset_shares"]


@dataclasses.dataclass(frozen=True)
class GroupBasis:
    """An orthonormal basis of the functions on a group, grouped by irrep."""

    irreps: list
    rows: Float[Tensor, "order order"]
    """Orthonormal rows; row 0 is the constant (the trivial irrep)."""
    irrep_of_row: Tensor
    """``[order]`` the index into :attr:`irreps` of each row."""

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.irreps]


@functools.lru_cache(maxsize=8)
def _basis(group) -> GroupBasis:
    irreps = group.irreps()
    rows, owner = [], []
    for i, irrep in enumerate(irreps):
        entries = irrep.matrices.reshape(group.order, -1)  # (order, dim^2): functions g -> rho_ij(g)
        u, s, _ = torch.linalg.svd(entries, full_matrices=False)
        rank = int((s > 1e-8 * s.max()).sum())
        rows.append(u[:, :rank].T)
        owner += [i] * rank
    basis = torch.cat(rows)
    if basis.shape[0] != group.order:
        raise RuntimeError(f"the irreps of {group.name} span {basis.shape[0]} of {group.order} dimensions")
    basis[0] = basis[0].abs()  # the constant row, with a positive sign
    return GroupBasis(irreps, basis, torch.tensor(owner))


def group_basis(group) -> GroupBasis:
    """The group Fourier basis of ``group`` (cached per group)."""
    return _basis(group)


def irrep_norms(matrix: Float[Tensor, "order d"], group) -> Float[Tensor, " n_irreps"]:
    """Norm of a matrix whose rows are indexed by group elements (``W_E[:order]``, or ``(W_out W_U)^T``) in each
    irrep's subspace."""
    basis = group_basis(group)
    coef = basis.rows.to(matrix) @ matrix  # (order, d)
    sq = torch.zeros(len(basis.irreps), dtype=coef.dtype, device=coef.device)
    sq.index_add_(0, basis.irrep_of_row.to(coef.device), coef.pow(2).sum(-1))
    return sq.sqrt()


def neuron_irreps(model: HookedTransformer, task) -> NeuronClusters:
    """Cluster the last MLP's neurons by the irrep that carries most of their variance over all (x, y).

    ``dominant`` indexes ``group_basis(task.group).irreps`` (never 0, the trivial irrep, which carries no variance
    after centring).
    """
    n = task.group.order
    acts = neuron_activations(model, task.tokens).detach().reshape(n, n, -1)
    basis = group_basis(task.group)
    return clusters_from_activations(acts, block_fractions(acts, basis.rows.to(acts), basis.irrep_of_row))


@dataclasses.dataclass(frozen=True)
class IrrepLogits:
    """The logits over (x, y, z) against ``chi_rho(x y z^-1)`` for every non-trivial irrep."""

    names: list[str]
    shares: Float[Tensor, " n_irreps"]
    """Share of the (centred) logit variance along each irrep's character function."""
    key: list[int]
    """Indices (into the group's irreps) of the key irreps: share >= the threshold."""

    @property
    def fraction_explained(self) -> float:
        """Share of logit variance explained by the key irreps together (the functions are orthogonal)."""
        return float(self.shares[self.key].sum()) if self.key else 0.0


def irrep_logit_shares(model: HookedTransformer, task, *, threshold: float = 0.05) -> IrrepLogits:
    """Fit the logits at the last position, over all (x, y, z), by ``sum_rho alpha_rho chi_rho(x y z^-1)``.

    The character functions of different irreps are orthogonal over the grid, so each share is one projection.
    On C_p the non-trivial characters are ``2 cos(w_k (a + b - c))``: the shares are those of
    :func:`~mi_toolkit.analysis.fourier.decompose_logits`.
    """
    group = task.group
    n = group.order
    with torch.no_grad():
        logits = model(task.tokens)[:, -1, :n].double()  # (x * n + y, z)
    logits = logits - logits.mean(dim=1, keepdim=True)
    logits = logits - logits.mean(dim=0, keepdim=True)
    total = logits.pow(2).sum().clamp_min(1e-30)
    # x y z^-1 for row (x, y) and column z
    product = group.table.reshape(-1).to(logits.device)  # x y
    xyz = group.table.to(logits.device)[product[:, None], group.inverse.to(logits.device)[None, :]]
    shares = []
    irreps = group.irreps()
    for irrep in irreps:
        direction = irrep.character.to(logits)[xyz]
        direction = direction - direction.mean(dim=1, keepdim=True)
        direction = direction - direction.mean(dim=0, keepdim=True)
        norm = direction.pow(2).sum()
        shares.append(float((logits * direction).sum() ** 2 / (norm * total)) if norm > 1e-12 else 0.0)
    shares_t = torch.tensor(shares)
    key = [i for i, s in enumerate(shares) if s >= threshold]
    return IrrepLogits([r.name for r in irreps], shares_t, key)


def product_directions(group, irrep_indices, device="cpu") -> Float[Tensor, "pairs r"]:
    """Orthonormal columns ``rho_ij(x y)`` over the order^2 pairs (row ``x * order + y``), for the given irreps."""
    basis = group_basis(group)
    keep = torch.isin(basis.irrep_of_row, torch.tensor(list(irrep_indices), dtype=torch.long))
    keep &= basis.irrep_of_row != 0
    product = group.table.reshape(-1)
    u = basis.rows[keep].T[product]  # (pairs, r): a basis function evaluated at x y
    return (u / u.norm(dim=0, keepdim=True).clamp_min(1e-12)).float().to(device)


def restricted_loss_irreps(model: HookedTransformer, task, irrep_indices, *, split: str = "test") -> float:
    """Loss when the last MLP's neurons keep only their components along the key irreps' ``rho_ij(x y)``."""
    return restricted_loss_on(model, task, product_directions(task.group, irrep_indices), split=split)


def excluded_loss_irreps(model: HookedTransformer, task, irrep_indices, *, split: str = "train") -> float:
    """Loss when those components are removed."""
    return excluded_loss_on(model, task, product_directions(task.group, irrep_indices), split=split)


__all__ += ["excluded_loss_irreps", "restricted_loss_irreps"]


def subgroups(group) -> list[tuple[int, ...]]:
    """Proper non-trivial subgroups (sorted element indices), largest first: the groups generated by one element,
    and for groups of order <= 200 by two (every subgroup of S_n, n <= 5, of A_n and D_n here is 2-generated)."""
    table = group.table.tolist()

    def closure(gens) -> frozenset:
        members, frontier = {group.identity}, [group.identity]
        while frontier:
            nxt = [table[g][x] for x in frontier for g in gens]
            frontier = [y for y in set(nxt) if y not in members]
            members.update(frontier)
        return frozenset(members)

    n = group.order
    cyclic = {closure([a]) for a in range(n)}
    found = set(cyclic)
    if n <= 200:
        for a in range(n):
            ca = closure([a])
            for b in range(a + 1, n):
                if b not in ca:
                    found.add(closure([a, b]))
    return sorted((tuple(sorted(h)) for h in found if 1 < len(h) < n), key=lambda h: (-len(h), h))


def coset_shares(values: Float[Tensor, "order d"], group, subgroup_list, *, side: str = "left") -> Tensor:
    """``[n_subgroups, d]``: the share of each column's variance (a function of one group element) explained by its
    means over the cosets ``x H`` (``side="left"``) or ``H x`` (``"right"``) of each subgroup H."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    device = values.device
    table = group.table.to(device)
    centred = values.double() - values.double().mean(0, keepdim=True)
    total = centred.pow(2).sum(0).clamp_min(1e-30)
    shares = torch.zeros(len(subgroup_list), values.shape[1], dtype=torch.float64, device=device)
    for h_index, members in enumerate(subgroup_list):
        members_t = torch.tensor(members, device=device)
        # the coset of each element, named by its smallest member
        cosets = (table[:, members_t] if side == "left" else table[members_t, :].T).min(dim=1).values
        labels = torch.unique(cosets, return_inverse=True)[1]
        sums = torch.zeros(int(labels.max()) + 1, centred.shape[1], dtype=torch.float64, device=device)
        sums.index_add_(0, labels, centred)
        means = sums / torch.bincount(labels).to(sums)[:, None]
        shares[h_index] = means[labels].pow(2).sum(0) / total
    return shares


def coset_concentration(model: HookedTransformer, task, *, threshold: float = 0.9, subgroup_list=None):
    """For each last-MLP neuron, the largest subgroup H on whose cosets its pre-activation is constant to within
    ``threshold`` of its variance (Stander et al. 2024).

    The pre-activation of a one-layer model is read as a function of x (averaged over y), on left cosets ``x H``
    (a term ``w^T rho(x) u`` is constant on them), and of y (averaged over x), on right cosets ``H y``; whichever
    is more concentrated counts (see :func:`coset_shares`). Small subgroups have many cosets and explain much by
    chance, so the largest subgroup that passes ``threshold`` is the neuron's.

    Returns:
        ``(subgroup_index [d_mlp], concentration [d_mlp], subgroups)`` (tensors on the CPU); index -1 where no
        subgroup passes (the concentration is then the best share over all subgroups).
    """
    group = task.group
    n = group.order
    subgroup_list = subgroups(group) if subgroup_list is None else subgroup_list
    name = get_act_name("pre", model.cfg.n_layers - 1)
    with torch.no_grad():
        pre = run_until(model, task.tokens, [name])[name][:, -1].reshape(n, n, -1)
    shares = torch.maximum(coset_shares(pre.mean(1), group, subgroup_list, side="left"),
                           coset_shares(pre.mean(0), group, subgroup_list, side="right")).cpu()
    passes = shares >= threshold  # subgroups are sorted largest first: the first passing row is the largest
    index = torch.where(passes.any(0), passes.float().argmax(0), torch.tensor(-1))
    best = torch.where(index >= 0, shares.gather(0, index.clamp_min(0)[None])[0], shares.max(0).values)
    return index, best, subgroup_list
