"""Activation patching: run the corrupted input with one clean component patched in at a time, for every component
of a target, many patched copies per forward pass (the plan and the engine are :mod:`._sweep`, :mod:`._restart` and
:mod:`._update`)."""

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mi_toolkit.analysis.patching._restart import CorruptedRun
from mi_toolkit.analysis.patching._sweep import Sweep
from mi_toolkit.analysis.patching.targets import TARGETS, check_inputs
from mi_toolkit.core.activations import run_until
from mi_toolkit.core.tl import HookedTransformer, get_act_name
from mi_toolkit.core.types import Metric

__all__ = ["activation_patch"]


@torch.no_grad()
def activation_patch(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "_batch _pos"],  # checked against clean_tokens with a clear error
    metric: Metric,
    target: str,
    *,
    layers: Sequence[int] | None = None,
    chunk_size: int | None = None,
    max_rows: int = 1024,
    progress: bool = False,
) -> Float[Tensor, "layer *index"]:
    """Patch each component of ``target`` from the clean run into the corrupted run; return the metric of each.

    Many patched copies of the corrupted batch run in one forward pass; each pass restarts from the corrupted run
    at the patched layer and at the first patched position (see :mod:`mi_toolkit.analysis.patching._restart`), so a per-position sweep
    costs far less than one full forward pass per patch.

    Args:
        model: any ``HookedTransformer``.
        clean_tokens: input whose activations are patched in.
        corrupted_tokens: input that is run; same shape as ``clean_tokens``.
        metric: patched logits ``[batch, pos, d_vocab_out]`` -> scalar (see :mod:`mi_toolkit.analysis.metrics`). It is
            called once per patch on that patch's logits (the corrupted batch size). If it declares the positions
            it reads (``metric.positions``, as the metrics of :mod:`mi_toolkit.analysis.metrics` do), patches that cannot
            change them are not run: they get the metric of the corrupted run.
        target: a name from :data:`~mi_toolkit.analysis.patching.targets.TARGETS` (:mod:`mi_toolkit.analysis.patching` lists shapes).
        layers: the layers to patch (default all); the result's first axis follows this list.
        chunk_size: patched copies of the batch per forward pass. Default for per-position targets: the patches
            of a quarter of the positions, or fewer to keep about 256 rows per pass (smaller chunks restart later
            in the sequence but take more passes); all of a layer's patches for other targets and for the last
            layer's position-local targets; always at most ``max_rows // batch``.
        max_rows: bounds memory when ``chunk_size`` is None: rows (copies x batch) per forward pass.
        progress: show a progress bar over forward passes.

    Returns:
        The metric of the corrupted run with each single component patched, ``[len(layers), *index]``.

    Raises:
        ValueError: mismatched or out-of-vocabulary tokens, an unknown target, a layer out of range.
    """
    layers = check_inputs(model, clean_tokens, corrupted_tokens, [target], layers)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    spec = TARGETS[target]
    batch, n_pos = clean_tokens.shape
    names = [get_act_name(spec.act, layer) for layer in layers]
    clean_cache = run_until(model, clean_tokens, names)
    clean = [clean_cache[name] for name in names]
    sweep = Sweep.plan(model, spec, layers, tuple(clean[0].shape), n_pos, metric, chunk_size, max_rows)
    run = CorruptedRun.build(model, corrupted_tokens, layers, sweep.kept, sweep.restart)
    results = torch.empty(len(layers), sweep.per_layer, device=clean[0].device)  # filled without a sync per patch
    if any(blind.any() for blind in sweep.blind):  # these patches leave the metric at its corrupted value
        base = metric(run.logits if run.logits is not None else model(corrupted_tokens))
        for i, blind in enumerate(sweep.blind):
            results[i, torch.arange(sweep.per_layer)[blind]] = base.to(results.dtype)
    for i, index in tqdm(sweep.chunks, disable=not progress, desc=f"patching {target}", dynamic_ncols=True):
        logits = sweep.logits(run, i, index, clean[i])
        for c in range(len(index)):
            results[i, index[c]] = metric(logits[c * batch : (c + 1) * batch])
    return results.view(len(layers), *sweep.sizes)
