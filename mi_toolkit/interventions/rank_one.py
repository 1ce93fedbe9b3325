"""Rank-one and multi-fact edits of an MLP's output weights, as reversible values (re-exported by
:mod:`mi_toolkit.interventions.editing`, ``mt.editing``).

In TransformerLens's layout an MLP writes ``k @ W_out + b_out``: the key ``k`` is the post-activation
(``hook_post``, ``[d_mlp]``) and ``W_out`` is ``[d_mlp, d_model]``. ROME (Meng et al. 2022) reads ``W_out`` as a
linear memory from keys to values and inserts ``k* -> v*`` while changing ``K @ W_out`` as little as possible for
keys with second moment ``C = E[k k^T]``:

    minimise  E_k |k (W' - W)|^2 = tr(D^T C D)   subject to   k* W' = v*,   D = W' - W.

With a Lagrange multiplier row ``l`` the stationarity condition is ``2 C D = 2 k*^T l``, so ``D = C^-1 k*^T l``; the
constraint gives ``(k* C^-1 k*^T) l = v* - k* W``, hence (column vectors ``k*``, ``C^-1 k*``)

    W' = W + (C^-1 k*) (v* - k* W)^T / (k*^T C^-1 k*)          (:func:`rank_one_update`)

MEMIT (Meng et al. 2023) inserts many pairs at once, ``min lambda tr(D^T C D) + |K D - R|^2`` for keys ``K``
``[n, d_mlp]`` and residuals ``R`` ``[n, d_model]``: ``D = (lambda C + K^T K)^-1 K^T R`` (:func:`memit_update`).

An edit is a :class:`WeightEdit`: ``apply()`` / ``undo()`` (which restores the exact original weights), or a
context manager.

>>> W, C = torch.randn(8, 4, dtype=torch.float64), torch.eye(8, dtype=torch.float64)
>>> k, v = torch.randn(8, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
>>> torch.allclose(k @ rank_one_update(W, C, k, v), v)
True
"""

import dataclasses
from collections.abc import Iterable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_toolkit.core.tl import HookedTransformer, get_act_name

__all__ = ["WeightEdit", "key_second_moment", "memit_update", "mlp_keys", "rank_one_update", "w_out_name"]


def rank_one_update(
    W_out: Float[Tensor, "d_mlp d_model"],
    C: Float[Tensor, "_d_mlp _d_mlp"],  # "_": checked below, with a clear error
    k_star: Float[Tensor, " _d_mlp"],
    v_star: Float[Tensor, " _d_model"],
) -> Float[Tensor, "d_mlp d_model"]:
    """ROME's closed form: the ``W_new`` with ``k_star @ W_new = v_star`` that changes ``K @ W_out`` least for
    keys with second moment ``C`` (derivation in the module docstring). Computed in float64, returned in
    ``W_out``'s dtype.

    Args:
        W_out: the MLP's output weights ``[d_mlp, d_model]``.
        C: ``E[k k^T]`` of the keys, symmetric positive definite.
        k_star: the key to rewrite.
        v_star: the value it should produce, ``k_star @ W_new`` (without the bias).

    Returns:
        The new ``W_out``.

    Raises:
        ValueError: shapes that do not fit each other.
    """
    d_mlp, d_model = W_out.shape
    if C.shape != (d_mlp, d_mlp) or k_star.shape != (d_mlp,) or v_star.shape != (d_model,):
        raise ValueError(f"shapes do not fit W_out {tuple(W_out.shape)}: need C [{d_mlp}, {d_mlp}], k_star [{d_mlp}] "
                         f"and v_star [{d_model}]; got {tuple(C.shape)}, {tuple(k_star.shape)}, {tuple(v_star.shape)}")
    W, k = W_out.double(), k_star.double()
    c_inv_k = torch.linalg.solve(C.double(), k)  # C^-1 k*
    residual = v_star.double() - k @ W  # v* - k* W
    return (W + torch.outer(c_inv_k, residual) / (k @ c_inv_k)).to(W_out.dtype)


def memit_update(
    W_out: Float[Tensor, "d_mlp d_model"],
    C: Float[Tensor, "_d_mlp _d_mlp"],  # "_": checked below, with a clear error
    keys: Float[Tensor, "_n _d_mlp"],
    residuals: Float[Tensor, "_n _d_model"],
    *,
    mom2_weight: float,
) -> Float[Tensor, "d_mlp d_model"]:
    """MEMIT's least-squares update of one layer: ``W_out + (lambda C + K^T K)^-1 K^T R``.

    Args:
        W_out: the MLP's output weights.
        C: ``E[k k^T]`` of the keys.
        keys: the keys of the facts to insert.
        residuals: what each key's output should change by.
        mom2_weight: ``lambda``, how strongly the other keys' outputs are preserved.
    """
    d_mlp, d_model = W_out.shape
    if C.shape != (d_mlp, d_mlp) or keys.shape[1] != d_mlp or residuals.shape != (keys.shape[0], d_model):
        raise ValueError(f"shapes do not fit W_out {tuple(W_out.shape)}: C {tuple(C.shape)}, keys "
                         f"{tuple(keys.shape)}, residuals {tuple(residuals.shape)}")
    if not mom2_weight > 0:
        raise ValueError(f"mom2_weight must be > 0, got {mom2_weight}")
    K = keys.double()
    delta = torch.linalg.solve(mom2_weight * C.double() + K.T @ K, K.T @ residuals.double())
    return (W_out.double() + delta).to(W_out.dtype)


@dataclasses.dataclass
class WeightEdit:
    """A change of some of ``model``'s weights, kept as a value: ``deltas[name]`` is added to the parameter
    ``name`` by :meth:`apply` and the exact original is put back by :meth:`undo`. ``with edit:`` applies it for the
    block. ``info`` holds what made it (e.g. ROME's ``k_star``, ``v_star`` and the final loss)."""

    model: HookedTransformer
    deltas: dict[str, Tensor]
    info: dict = dataclasses.field(default_factory=dict)
    _originals: dict[str, Tensor] | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        params = dict(self.model.named_parameters())
        for name, delta in self.deltas.items():
            if name not in params or params[name].shape != delta.shape:
                raise ValueError(f"{name} is not a parameter of shape {tuple(delta.shape)} of the model")

    @property
    def applied(self) -> bool:
        return self._originals is not None

    @torch.no_grad()
    def apply(self) -> "WeightEdit":
        """Add the deltas (returns ``self``); an applied edit cannot be applied again."""
        if self.applied:
            raise RuntimeError("this edit is already applied")
        params = dict(self.model.named_parameters())
        self._originals = {name: params[name].detach().clone() for name in self.deltas}
        for name, delta in self.deltas.items():
            params[name].add_(delta.to(params[name].device, params[name].dtype))
        return self

    @torch.no_grad()
    def undo(self) -> "WeightEdit":
        """Put the original weights back exactly (returns ``self``)."""
        if not self.applied:
            raise RuntimeError("this edit is not applied")
        params = dict(self.model.named_parameters())
        for name, original in self._originals.items():
            params[name].copy_(original)
        self._originals = None
        return self

    def __enter__(self) -> "WeightEdit":
        return self.apply()

    def __exit__(self, *exc) -> None:
        self.undo()


def w_out_name(layer: int) -> str:
    """The parameter name of layer ``layer``'s MLP output weights."""
    return f"blocks.{layer}.mlp.W_out"


@torch.no_grad()
def mlp_keys(
    model: HookedTransformer, layer: int, tokens: Int[Tensor, "batch pos"], positions: Int[Tensor, " batch"]
) -> Float[Tensor, "batch d_mlp"]:
    """The MLP keys (``hook_post``) of ``layer`` at one position per sequence."""
    name = get_act_name("post", layer)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == name, stop_at_layer=layer + 1)
    return cache[name][torch.arange(len(tokens)), positions]


@torch.no_grad()
def key_second_moment(
    model: HookedTransformer, layer: int | Sequence[int], batches: Iterable[tuple[Tensor, Tensor]]
) -> Float[Tensor, "d_mlp d_mlp"] | dict[int, Float[Tensor, "d_mlp d_mlp"]]:
    """``C = E[k k^T]`` of ``layer``'s MLP keys over every position that ``mask`` keeps, in float64; for a sequence
    of layers, ``{layer: C}`` from one forward pass per batch (up to the last of them).

    Args:
        model: the model.
        layer: the MLP's layer, or several.
        batches: ``(tokens [batch, pos], mask [batch, pos])`` pairs, e.g. the training data without its padding.
    """
    single = not isinstance(layer, Iterable)  # an int, or a numpy integer
    layers = [int(layer)] if single else [int(index) for index in layer]
    if not layers:
        raise ValueError("no layers given")
    names = {get_act_name("post", index): index for index in layers}
    totals, count = {}, 0
    for tokens, mask in batches:
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names, stop_at_layer=max(layers) + 1)
        keep = mask.to(torch.bool)
        for name, index in names.items():
            keys = cache[name][keep].double()  # (n, d_mlp)
            totals[index] = keys.T @ keys if index not in totals else totals[index] + keys.T @ keys
        count += int(keep.sum())
    if not count:
        raise ValueError("no keys: the batches are empty or every position is masked")
    moments = {index: total / count for index, total in totals.items()}
    return moments[layers[0]] if single else moments
