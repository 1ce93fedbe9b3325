"""The two probe solvers of :mod:`mi_toolkit.analysis.probes`: ridge regression on one-hot targets (batched
normal equations, one solve per distinct label mask) and multinomial logistic regression trained by AdamW.

Both take validated inputs (``labels`` in ``[-1, n_classes)``, every output labelled on some row) and return the
probe's weights in the raw activation basis: ``logits = acts @ W + b`` with ``W [d_in, outputs, classes]``.
"""

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["fit_adamw", "fit_ridge"]

_CHUNK = 16384
"""Rows per float64 block when accumulating the normal equations (bounds the float64 copy's memory)."""


def fit_ridge(
    acts: Float[Tensor, "n d_in"], labels: Int[Tensor, "n outputs"], n_classes: int, ridge: float
) -> tuple[Float[Tensor, "d_in outputs classes"], Float[Tensor, "outputs classes"]]:
    """Least squares from ``acts`` (plus an unpenalised bias) to one-hot labels, with a relative ridge penalty.

    Each output is fitted on its own labelled rows only: outputs that share a label mask share one Gram matrix
    and one solve (one in all when every row is labelled, as for board states); outputs with another mask get
    their own. The penalty is ``ridge * tr(Xc^T Xc) / d_in`` on the mask's centred rows ``Xc``: a fraction of the
    mean eigenvalue, so one value means the same at every layer whatever the residual stream's norm. Sums run in
    float64; the activations are shifted by their mean first, which the free bias makes harmless.
    """
    d, n_outputs = acts.shape[1], labels.shape[1]
    shift = acts.double().mean(0)
    masks, group = torch.unique((labels >= 0).T, dim=0, return_inverse=True)  # (groups, n), (outputs,)
    W = acts.new_zeros(d, n_outputs, n_classes, dtype=torch.float64)
    b = acts.new_zeros(n_outputs, n_classes, dtype=torch.float64)
    for g, mask in enumerate(masks):
        outputs = (group == g).nonzero().squeeze(1)
        gram = acts.new_zeros(d + 1, d + 1, dtype=torch.float64)
        rhs = acts.new_zeros(d + 1, len(outputs) * n_classes, dtype=torch.float64)
        rows = mask.nonzero().squeeze(1)
        for chunk in rows.split(_CHUNK):
            x = torch.cat([acts[chunk].double() - shift, acts.new_ones(len(chunk), 1, dtype=torch.float64)], 1)
            y = F.one_hot(labels[chunk][:, outputs], n_classes).double().flatten(1)  # (rows, outputs * classes)
            gram += x.T @ x
            rhs += x.T @ y
        n_rows = gram[d, d]
        centred_trace = gram[:d, :d].trace() - gram[:d, d].square().sum() / n_rows
        penalty = ridge * centred_trace / d if centred_trace > 0 else torch.tensor(ridge, dtype=torch.float64)
        gram[:d, :d].diagonal().add_(penalty)
        solution, info = torch.linalg.solve_ex(gram, rhs)
        if info.item() != 0 or not solution.isfinite().all():
            raise ValueError("the probe's normal equations are singular (activations of rank below d_in); "
                             "use ridge > 0")
        solution = solution.view(d + 1, len(outputs), n_classes)
        W[:, outputs] = solution[:d]
        b[outputs] = solution[d] - torch.einsum("d,doc->oc", shift, solution[:d])
    return W.to(acts.dtype), b.to(acts.dtype)


def fit_adamw(
    acts: Float[Tensor, "n d_in"],
    labels: Int[Tensor, "n outputs"],
    n_classes: int,
    *,
    lr: float,
    weight_decay: float,
    epochs: int,
    batch_size: int,
    seed: int,
    progress: bool,
) -> tuple[Float[Tensor, "d_in outputs classes"], Float[Tensor, "outputs classes"]]:
    """Multinomial logistic regression per output (cross-entropy, ignored labels masked out), trained by AdamW.

    The activations are standardised per dimension for training (so one learning rate serves every layer) and the
    weights mapped back to the raw basis afterwards; weight decay acts on the standardised weights, not the bias.
    Weights start at zero and the row order is drawn from a CPU generator seeded with ``seed``, so a run is
    deterministic on the CPU.
    """
    n, d = acts.shape
    n_outputs = labels.shape[1]
    x_all = acts.float()
    mean, std = x_all.mean(0), x_all.std(0, correction=0).clamp_min(1e-6)
    W = torch.zeros(d, n_outputs * n_classes, device=acts.device, requires_grad=True)
    b = torch.zeros(n_outputs * n_classes, device=acts.device, requires_grad=True)
    optimizer = torch.optim.AdamW([{"params": [W]}, {"params": [b], "weight_decay": 0.0}], lr=lr,
                                  weight_decay=weight_decay, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(total=epochs * -(-n // batch_size), disable=not progress, desc="probe")
    for _ in range(epochs):
        for batch in torch.randperm(n, generator=generator).to(acts.device).split(batch_size):
            target = labels[batch].flatten()
            if not (target >= 0).any():
                bar.update()
                continue
            logits = ((x_all[batch] - mean) / std) @ W + b  # (batch, outputs * classes)
            loss = F.cross_entropy(logits.view(-1, n_classes), target, ignore_index=-1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update()
            if progress:
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    bar.close()
    W_std = W.detach().view(d, n_outputs, n_classes)
    W_raw = W_std / std[:, None, None]
    b_raw = b.detach().view(n_outputs, n_classes) - torch.einsum("d,doc->oc", mean, W_raw)
    return W_raw.to(acts.dtype), b_raw.to(acts.dtype)
