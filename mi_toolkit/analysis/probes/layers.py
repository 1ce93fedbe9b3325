"""Probes at many hook points from one forward pass, each scored on held-out sequences beside its baselines: the
majority class, the same probe on a randomly initialised model of the same architecture, and a control task (Hewitt &
Liang 2019) that measures what the probe memorises (selectivity = task accuracy - control accuracy).
"""

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from mi_toolkit.analysis.probes.probe import Probe, ProbeAccuracy, ProbeConfig, check_labels, fit_probe
from mi_toolkit.core.activations import run_until, select_positions
from mi_toolkit.core.tl import HookedTransformer, check_hook_name, get_act_name
from mi_toolkit.core.types import Positions
from mi_toolkit.models.factory import build_model

__all__ = ["LayerProbes", "probe_layers"]


@dataclasses.dataclass(frozen=True, eq=False)
class LayerProbes:
    """One probe per hook point and its held-out accuracy beside the baselines (dicts keyed by hook name, in
    order). Baselines not computed are empty dicts. :meth:`table` puts them side by side."""

    probes: dict[str, Probe]
    """The probe of each hook point, fitted on the training sequences."""
    train: dict[str, ProbeAccuracy]
    """Accuracy on the training rows."""
    test: dict[str, ProbeAccuracy]
    """Accuracy on the held-out sequences' rows (with per-sequence counts: ``test[name].interval()``)."""
    majority: ProbeAccuracy
    """Held-out accuracy of predicting each output's most common training class (the same at every hook)."""
    control: dict[str, ProbeAccuracy]
    """Held-out accuracy of the same kind of probe on the control task: every token type at the probed position gets
    a fixed random label per output, drawn from the real labels' class distribution (Hewitt & Liang 2019)."""
    random_model: dict[str, ProbeAccuracy]
    """Held-out accuracy of the same kind of probe on a randomly initialised model of the same architecture
    (``build_model(model.cfg, seed=config.seed)``)."""
    held_out: Bool[Tensor, " batch"]
    """The held-out sequences."""
    config: ProbeConfig
    """How the probes were fitted."""

    @property
    def hook_names(self) -> tuple[str, ...]:
        return tuple(self.probes)

    def selectivity(self) -> dict[str, float]:
        """Held-out task accuracy minus control-task accuracy per hook point (needs the control task)."""
        return {name: self.test[name].overall - self.control[name].overall for name in self.control}

    def table(self) -> list[dict[str, str | float]]:
        """One row per hook point: ``hook_name``, ``train``, ``test``, ``test_low`` and ``test_high`` (its 95%
        bootstrap interval over the held-out sequences), ``majority``, ``control``, ``selectivity``, ``random_model``
        (overall accuracies; NaN for a baseline not computed)."""
        nan, selectivity = float("nan"), self.selectivity()
        intervals = {name: self.test[name].interval() for name in self.probes}
        return [{"hook_name": name, "train": self.train[name].overall, "test": self.test[name].overall,
                 "test_low": intervals[name][0], "test_high": intervals[name][1], "majority": self.majority.overall,
                 "control": self.control[name].overall if name in self.control else nan,
                 "selectivity": selectivity.get(name, nan),
                 "random_model": self.random_model[name].overall if name in self.random_model else nan}
                for name in self.probes]


def _collect(model: HookedTransformer, tokens: Tensor, names: list[str], positions, batch_size: int):
    """Every hook point's activations at ``positions`` as rows, from one (early-stopping) pass per token batch."""
    chunks: dict[str, list[Tensor]] = {name: [] for name in names}
    with torch.no_grad():
        for batch in tokens.split(batch_size):
            acts = run_until(model, batch.to(model.cfg.device), names)
            for name in names:
                chunks[name].append(select_positions(acts[name], positions))
    return {name: torch.cat(rows) for name, rows in chunks.items()}


def _rows(x: Tensor, positions: Positions | None) -> Tensor:
    """Integer ``x [batch, pos, k]`` at ``positions`` as ``[rows, k]``, in the row order of ``select_positions``."""
    if isinstance(positions, Tensor):
        positions = positions.to(x.device)
    return x[:, slice(None) if positions is None else positions].reshape(-1, x.shape[-1])


def _held_out(held_out: float | Tensor, batch: int, seed: int) -> Tensor:
    if isinstance(held_out, Tensor):
        if held_out.shape != (batch,) or held_out.dtype != torch.bool:
            raise ValueError(f"held_out must be a fraction or a bool mask of shape ({batch},)")
        mask = held_out.cpu()
    else:
        n_test = round(held_out * batch)
        if not 0 < held_out < 1 or not 0 < n_test < batch:
            raise ValueError(f"held_out={held_out} of {batch} sequences leaves no training or no test sequence")
        mask = torch.zeros(batch, dtype=torch.bool)
        mask[torch.randperm(batch, generator=torch.Generator().manual_seed(seed))[:n_test]] = True
    if mask.all() or not mask.any():
        raise ValueError("held_out must leave at least one training and one test sequence")
    return mask


def probe_layers(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    labels: Int[Tensor, "batch pos outputs"],
    n_classes: int,
    config: ProbeConfig | None = None,
    *,
    hook_names: Sequence[str] | None = None,
    positions: Positions | None = None,
    held_out: float | Bool[Tensor, " batch"] = 0.2,
    control: bool = True,
    random_model: bool = True,
    batch_size: int = 256,
    progress: bool = False,
) -> LayerProbes:
    """Fit a probe at each hook point from one forward pass, and score it on held-out sequences with baselines.

    Activations of every hook point (at ``positions``) are kept on the model's device at once: about rows x d_model
    x hook points x 4 bytes (and as much again for the random model, after the first are freed).

    Args:
        model: the model to probe.
        tokens: the input sequences.
        labels: the class of each output at each position, in ``[0, n_classes)``; -1 where there is none.
        n_classes: number of classes per output.
        config: the probe's method and settings (None: ``ProbeConfig()``); ``config.seed`` also draws the split,
            the control task and the random model.
        hook_names: hook points to probe; default the embedding (``blocks.0.hook_resid_pre``) and every layer's
            ``hook_resid_post``.
        positions: sequence positions to probe (None: all); each gives one row per sequence.
        held_out: fraction of sequences held out for testing (drawn with the seed), or a mask of them. Sequences,
            not rows, are split, so no test position shares a sequence with a training one.
        control: also fit the control task (one more fit per hook point).
        random_model: also probe a randomly initialised copy of the architecture (one more forward pass and fit
            per hook point).
        batch_size: sequences per forward pass.
        progress: show a progress bar over the fits.

    Returns:
        A :class:`LayerProbes`.

    Raises:
        ValueError: shapes that do not match, labels outside ``[-1, n_classes)``, unknown hook points, a split that
            leaves a side empty or an output without training labels; all before any forward pass.
    """
    config = ProbeConfig() if config is None else config
    if tokens.ndim != 2 or tokens.dtype.is_floating_point or labels.ndim != 3 or labels.shape[:2] != tokens.shape:
        raise ValueError(f"labels must be [batch, pos, outputs] over integer tokens [batch, pos], got "
                         f"{tuple(labels.shape)} and {tokens.dtype} {tuple(tokens.shape)}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= model.cfg.d_vocab):
        raise ValueError(f"tokens must lie in [0, d_vocab={model.cfg.d_vocab})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    names = list(dict.fromkeys(hook_names if hook_names is not None else [get_act_name("resid_pre", 0)] + [
        get_act_name("resid_post", layer) for layer in range(model.cfg.n_layers)]))
    if not names:
        raise ValueError("hook_names is empty")
    for name in names:
        check_hook_name(model, name)
    try:
        label_rows = _rows(labels, positions)  # (rows, outputs): the positions of sequence 0, then 1, ...
    except IndexError as err:
        raise ValueError(f"positions {positions} do not index {labels.shape[1]} positions: {err}") from err
    check_labels(label_rows, n_classes)
    sequence = _rows(torch.arange(len(tokens))[:, None, None].expand(*tokens.shape, 1), positions)[:, 0]
    held_out = _held_out(held_out, len(tokens), config.seed)
    test_rows = held_out[sequence]
    unlabelled = (~(label_rows[~test_rows] >= 0).any(0)).nonzero().squeeze(1).tolist()
    if unlabelled:
        raise ValueError(f"outputs {unlabelled} have no labels in the training sequences")

    device = torch.device(model.cfg.device)
    label_rows, test_rows = label_rows.to(device), test_rows.to(device)
    train_labels, test_labels = label_rows[~test_rows], label_rows[test_rows]
    test_sequence = sequence.to(device)[test_rows]  # each held-out row's sequence: the bootstrap's unit
    class_counts = ProbeAccuracy.from_predictions(train_labels.clamp_min(0), train_labels, n_classes).confusion.sum(-1)
    majority = ProbeAccuracy.from_predictions(class_counts.argmax(-1).expand_as(test_labels), test_labels, n_classes,
                                              groups=test_sequence)
    if control:  # a fixed random label per token type and output, with the training labels' class frequencies
        generator = torch.Generator().manual_seed(config.seed)
        table = torch.multinomial(class_counts.double(), model.cfg.d_vocab, True, generator=generator).T
        control_rows = table[_rows(tokens[..., None].cpu(), positions)[:, 0]].to(device)
        control_rows = torch.where(label_rows >= 0, control_rows, -1)
        control_train, control_test = control_rows[~test_rows], control_rows[test_rows]

    probes, train, test, control_acc, random_acc = {}, {}, {}, {}, {}
    bar = tqdm(total=len(names) * (1 + control + random_model), disable=not progress, desc="probes")
    acts = _collect(model, tokens, names, positions, batch_size)
    for name in names:
        rows = acts.pop(name)  # split once per hook point and let go of the rest
        train_acts, test_acts = rows[~test_rows], rows[test_rows]
        del rows
        probes[name] = fit_probe(train_acts, train_labels, n_classes, config, hook_name=name)
        train[name] = probes[name].accuracy(train_acts, train_labels)
        test[name] = probes[name].accuracy(test_acts, test_labels, groups=test_sequence)
        bar.update()
        if control:
            probe = fit_probe(train_acts, control_train, n_classes, config, hook_name=name)
            control_acc[name] = probe.accuracy(test_acts, control_test, groups=test_sequence)
            bar.update()
    if random_model:
        baseline = build_model(model.cfg, seed=config.seed, device=device).eval()
        acts = _collect(baseline, tokens, names, positions, batch_size)
        for name in names:
            rows = acts.pop(name)
            probe = fit_probe(rows[~test_rows], train_labels, n_classes, config, hook_name=name)
            random_acc[name] = probe.accuracy(rows[test_rows], test_labels, groups=test_sequence)
            bar.update()
    bar.close()
    return LayerProbes(probes, train, test, majority, control_acc, random_acc, held_out, config)
