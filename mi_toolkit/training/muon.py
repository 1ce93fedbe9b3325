"""Muon (Jordan et al. 2024): SGD momentum whose update for each hidden weight matrix is replaced by the nearest
semi-orthogonal matrix (a Newton-Schulz iteration), so every direction of the matrix moves by the same amount; the
other parameters (embeddings, unembedding, norms, biases) take AdamW's update, in the same optimiser.

``torch.optim.Muon`` takes 2-D parameters only, and TransformerLens keeps attention weights per head
(``W_Q`` is ``[n_heads, d_model, d_head]``), so each parameter here is first viewed as the matrix of the linear map
it is (``[d_model, n_heads * d_head]``), orthogonalised, and viewed back.
"""

import functools
import math

import torch
from torch import Tensor, nn

from mi_toolkit.core.tl import MLP, AbstractAttention, GatedMLP

__all__ = ["Muon", "muon_param_groups", "native_bfloat16", "orthogonalise"]

_NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
"""Keller Jordan's quintic coefficients: five steps take every singular value into roughly [0.7, 1.2]."""

_ATTENTION_INPUT_DIMS = {"W_Q": (1,), "W_K": (1,), "W_V": (1,), "_W_K": (1,), "_W_V": (1,), "W_O": (0, 1)}
_MLP_INPUT_DIMS = {"W_in": (0,), "W_gate": (0,), "W_out": (0,)}
"""TransformerLens block weights: which dimensions are the map's input (``W_Q`` ``[n_heads, d_model, d_head]`` reads
``d_model``; ``W_O`` ``[n_heads, d_head, d_model]`` reads ``n_heads * d_head``; ``W_in`` ``[d_model, d_mlp]``)."""


def orthogonalise(matrix: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately ``U V^T`` of ``matrix = U S V^T`` (its orthogonal polar factor), by Newton-Schulz steps; a
    stack ``[..., m, n]`` of matrices at once."""
    if matrix.ndim < 2:
        raise ValueError(f"orthogonalise takes a matrix or a stack of them, got shape {tuple(matrix.shape)}")
    x = matrix / (torch.linalg.matrix_norm(matrix, keepdim=True) + eps)
    wide = x.shape[-2] <= x.shape[-1]
    x = x if wide else x.mT
    a, b, c = _NEWTON_SCHULZ
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.mT


@functools.cache
def native_bfloat16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA GPU of compute capability 8.0 or higher
    (Ampere on), or a CPU with AVX512-BF16 or AMX. Elsewhere PyTorch emulates bfloat16, and the Newton-Schulz steps of
    a 128 x 512 matrix took 80 ms in bfloat16 against 2.7 ms in float32 (an AVX2-only CPU, 2 threads). Cached per
    device: Muon asks at every step."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private in torch.cpu: absent means no
    return device.type == "cpu" and any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def _as_matrix(tensor: Tensor, input_dims: tuple[int, ...]) -> Tensor:
    """``tensor`` as ``[fan_in, fan_out]``, the ``input_dims`` first."""
    rest = [d for d in range(tensor.ndim) if d not in input_dims]
    fan_in = math.prod(tensor.shape[d] for d in input_dims)
    return tensor.permute(*input_dims, *rest).reshape(fan_in, -1)


def _from_matrix(matrix: Tensor, like: Tensor, input_dims: tuple[int, ...]) -> Tensor:
    order = [*input_dims, *(d for d in range(like.ndim) if d not in input_dims)]
    return matrix.reshape([like.shape[d] for d in order]).permute(*(order.index(d) for d in range(like.ndim)))


def muon_param_groups(model: nn.Module, *, lr: float, muon_lr: float, weight_decay: float,
                      betas: tuple[float, float] = (0.9, 0.98)) -> list[dict]:
    """Parameter groups of :class:`Muon` for ``model``'s trainable parameters: the weights of TransformerLens
    attention and MLP modules (``W_Q/W_K/W_V/W_O``, ``W_in/W_gate/W_out``) and ``nn.Linear`` weights take Muon's
    update at ``muon_lr``; everything else (embeddings, unembedding, positions, norms, biases, any other module's
    parameters) AdamW's at ``lr``. The AdamW group comes first, so ``param_groups[0]["lr"]`` is the recipe's."""
    input_dims = {}
    for module in model.modules():
        layout, ndim = ((_ATTENTION_INPUT_DIMS, 3) if isinstance(module, AbstractAttention)
                        else (_MLP_INPUT_DIMS, 2) if isinstance(module, (MLP, GatedMLP))
                        else ({"weight": (1,)}, 2) if isinstance(module, nn.Linear) else ({}, 0))
        for name, param in module.named_parameters(recurse=False):
            if name in layout and param.ndim == ndim:  # another layout (a subclass's own) stays with AdamW
                input_dims[id(param)] = layout[name]
    by_dims: dict[tuple[int, ...], list[Tensor]] = {}
    others = []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if id(param) in input_dims:
            by_dims.setdefault(input_dims[id(param)], []).append(param)
        else:
            others.append(param)
    groups = [{"params": others, "kind": "adamw", "lr": lr}] if others else []
    groups += [{"params": ps, "kind": "muon", "input_dims": list(dims), "lr": muon_lr} for dims, ps in by_dims.items()]
    for group in groups:
        group.update(weight_decay=weight_decay, betas=betas)
    return groups


class Muon(torch.optim.Optimizer):
    """Muon for the groups of ``kind`` ``"muon"`` (each with its ``input_dims``), AdamW for those of ``kind``
    ``"adamw"``; build the groups with :func:`muon_param_groups`. Weight decay is decoupled in both (``lr *
    weight_decay`` a step).

    Args:
        momentum: Muon's (Nesterov) momentum.
        ns_steps: Newton-Schulz steps.
        ns_dtype: the precision of the Newton-Schulz steps. None (the default): bfloat16, as in the reference
            implementation, on devices that compute in it natively (:func:`native_bfloat16`: CUDA from compute
            capability 8.0, CPUs with AVX512-BF16 or AMX; 2.8x faster than float32 for the Othello model's matrices
            on 2 CPU cores with bfloat16 instructions; the orthogonalised update is within about 0.01 of float32's),
            float32 elsewhere (bfloat16 emulated in software was 30x slower).
        eps: AdamW's epsilon.
    """

    def __init__(self, param_groups: list[dict], *, momentum: float = 0.95, ns_steps: int = 5,
                 ns_dtype: torch.dtype | None = None, eps: float = 1e-8):
        super().__init__(param_groups, dict(momentum=momentum, ns_steps=ns_steps, eps=eps, weight_decay=0.0,
                                            betas=(0.9, 0.98), input_dims=[]))
        self.ns_dtype = ns_dtype

    def add_param_group(self, param_group: dict) -> None:
        kind = param_group.get("kind")
        if kind not in ("muon", "adamw"):
            raise ValueError(f"every group needs kind 'muon' or 'adamw', got {kind!r}")
        if kind == "muon" and not param_group.get("input_dims"):
            raise ValueError("a 'muon' group needs input_dims: the dimensions of its weights that the map reads")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            for param in params:
                param.mul_(1 - lr * decay)
            if group["kind"] == "muon":
                self._muon_update(params, group, lr)
            else:
                for param in params:
                    self._adamw_update(param, group, lr)
        return loss

    def _muon_update(self, params: list[Tensor], group: dict, lr: float) -> None:
        """Nesterov momentum, then each update's matrix orthogonalised (matrices of one shape in one stack)."""
        dims = tuple(group["input_dims"])
        by_shape: dict[tuple, list[tuple[Tensor, Tensor]]] = {}
        for param in params:
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(param)
            buffer = state["momentum_buffer"]
            buffer.mul_(group["momentum"]).add_(param.grad)
            matrix = _as_matrix(param.grad.add(buffer, alpha=group["momentum"]), dims)
            by_shape.setdefault((tuple(matrix.shape), param.dtype, param.device), []).append((param, matrix))
        for ((fan_in, fan_out), dtype, device), pairs in by_shape.items():
            stack = torch.stack([m for _, m in pairs]).to(self.ns_dtype_on(device))
            orthogonal = orthogonalise(stack, group["ns_steps"]).to(dtype)
            for (param, _), update in zip(pairs, orthogonal):
                param.add_(_from_matrix(update, param, dims), alpha=-lr * max(1.0, fan_out / fan_in) ** 0.5)

    def ns_dtype_on(self, device: torch.device | str) -> torch.dtype:
        """The dtype of the Newton-Schulz steps for matrices on ``device``: ``ns_dtype`` where given, else bfloat16
        where the device computes in it natively and float32 elsewhere."""
        return self.ns_dtype or (torch.bfloat16 if native_bfloat16(device) else torch.float32)

    def _adamw_update(self, param: Tensor, group: dict, lr: float) -> None:
        state = self.state[param]
        if not state:
            state.update(step=torch.zeros(()), exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = float(state["step"])
        state["exp_avg"].lerp_(param.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
        param.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1**step))
