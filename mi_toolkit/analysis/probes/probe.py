"""Linear probes: what a layer's activations say, linearly, about labelled properties of the input.

:func:`fit_probe` fits one probe for many categorical outputs at once (e.g. 36 board squares x 3 classes), by ridge
regression on one-hot targets (closed form) or multinomial logistic regression trained with AdamW. A label of ``-1``
means "no label here" and is left out of the fit and of every accuracy. A :class:`Probe` gives logits, predictions,
its :class:`ProbeAccuracy` (on any subset of rows), unit probe directions and the direction from one class to another
(what an intervention moves along); it saves to one safetensors file (:func:`load_probe` reads it).
"""

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mi_toolkit.analysis.bootstrap import bounds, check_level, resample
from mi_toolkit.analysis.probes._fit import fit_adamw, fit_ridge
from mi_toolkit.core.io import CheckpointError, load_tensors, save_tensors

__all__ = ["Probe", "ProbeAccuracy", "ProbeConfig", "check_labels", "fit_probe", "load_probe"]


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """How a probe is fitted (:func:`fit_probe`, :func:`mi_toolkit.analysis.probes.probe_layers`)."""

    method: Literal["ridge", "adamw"] = "ridge"
    """``"ridge"``: least squares on one-hot targets, closed form (fast, no settings to tune; the class with the
    largest score wins). ``"adamw"``: multinomial logistic regression (the linear probe of Nanda et al. 2023 on
    Othello-GPT), trained with AdamW on cross-entropy."""
    ridge: float = 1e-3
    """Ridge only: the penalty as a fraction of the mean eigenvalue of the centred activations' Gram matrix,
    ``lambda = ridge * tr(Xc^T Xc) / d_in``, so it means the same at every layer."""
    lr: float = 1e-3
    """AdamW only: learning rate, on standardised activations. Nanda trains with 1e-4 for 2 epochs over millions of
    games; on the tens of thousands of rows a small model gives, 1e-3 for more epochs converges."""
    weight_decay: float = 0.01
    """AdamW only: decoupled weight decay of the (standardised) weights; the bias is not decayed."""
    epochs: int = 10
    """AdamW only: passes over the training rows."""
    batch_size: int = 256
    """AdamW only: rows per step."""
    seed: int = 0
    """Seed of the row order (AdamW) and, in ``probe_layers``, of the split, the control task and the random
    model."""

    def __post_init__(self):
        if self.method not in ("ridge", "adamw"):
            raise ValueError(f"method must be 'ridge' or 'adamw', got {self.method!r}")
        if not self.ridge >= 0 or not self.lr > 0 or not self.weight_decay >= 0:
            raise ValueError(f"need ridge >= 0, lr > 0, weight_decay >= 0, got {self.ridge}, {self.lr}, "
                             f"{self.weight_decay}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"need epochs >= 1 and batch_size >= 1, got {self.epochs}, {self.batch_size}")


@dataclasses.dataclass(frozen=True, eq=False)
class ProbeAccuracy:
    """How often a probe (or a baseline) predicts the true class, kept as confusion counts so that accuracy on any
    set of true classes (e.g. occupied squares only: :meth:`among`) can be read off later."""

    confusion: Int[Tensor, "outputs classes classes"]
    """``confusion[o, true, predicted]``: number of labelled rows of output ``o`` (on the CPU)."""
    group_counts: Int[Tensor, "groups classes 2"] | None = None
    """Where the rows came in groups (e.g. the positions of one sequence, which are not independent): per group and
    true class, the counted entries and the correct ones. :meth:`interval` resamples them."""

    @classmethod
    def from_predictions(
        cls,
        predicted: Int[Tensor, "n outputs"],
        labels: Int[Tensor, "n outputs"],
        n_classes: int,
        where: Bool[Tensor, "n outputs"] | None = None,
        groups: Int[Tensor, " n"] | None = None,
    ) -> "ProbeAccuracy":
        """Count ``predicted`` against ``labels`` on the entries with a label (not -1) and, if given, ``where``;
        ``groups`` (one id per row) also keeps the counts per group for :meth:`interval`."""
        counted = labels >= 0
        if where is not None:
            counted = counted & where.to(counted.device)
        predicted = predicted.to(labels.device)
        output = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
        index = (output * n_classes + labels) * n_classes + predicted
        counts = torch.bincount(index[counted], minlength=labels.shape[1] * n_classes**2)
        confusion = counts.view(labels.shape[1], n_classes, n_classes).cpu()
        if groups is None:
            return cls(confusion)
        if groups.shape != labels.shape[:1]:
            raise ValueError(f"groups must hold one id per row ({len(labels)}), got shape {tuple(groups.shape)}")
        _, group = torch.unique(groups.to(labels.device), return_inverse=True)
        n_groups = int(group.max()) + 1 if len(group) else 0
        index = ((group[:, None] * n_classes + labels) * 2 + (predicted == labels))[counted]
        per_group = torch.bincount(index, minlength=n_groups * n_classes * 2).view(n_groups, n_classes, 2)
        return cls(confusion, torch.stack([per_group.sum(-1), per_group[..., 1]], -1).cpu())

    @property
    def counts(self) -> Int[Tensor, " outputs"]:
        """Labelled rows per output."""
        return self.confusion.sum((1, 2))

    @property
    def per_output(self) -> Float[Tensor, " outputs"]:
        """Accuracy per output (NaN for an output without labelled rows)."""
        return self.confusion.diagonal(dim1=1, dim2=2).sum(-1) / self.counts

    @property
    def per_class(self) -> Float[Tensor, "outputs classes"]:
        """Accuracy (recall) per output and true class."""
        return self.confusion.diagonal(dim1=1, dim2=2) / self.confusion.sum(-1)

    @property
    def overall(self) -> float:
        """Accuracy over every labelled (row, output) entry."""
        return (self.confusion.diagonal(dim1=1, dim2=2).sum() / self.confusion.sum()).item()

    def among(self, classes: Sequence[int]) -> "ProbeAccuracy":
        """The accuracy on the entries whose true class is one of ``classes`` (e.g. ``[1, 2]``: occupied squares)."""
        keep = torch.zeros(self.confusion.shape[1], dtype=torch.bool)
        keep[list(classes)] = True
        groups = None if self.group_counts is None else self.group_counts * keep[None, :, None]
        return ProbeAccuracy(self.confusion * keep[None, :, None], groups)

    def interval(self, level: float = 0.95, n_bootstrap: int = 1000, seed: int = 0) -> tuple[float, float]:
        """A percentile bootstrap interval of :attr:`overall` that resamples whole groups of rows (sequences, for
        :func:`~mi_toolkit.analysis.probes.probe_layers`' held-out accuracies), so the positions of one sequence
        count as one draw.

        >>> labels = torch.tensor([[0], [1], [1], [0]])
        >>> accuracy = ProbeAccuracy.from_predictions(torch.tensor([[0], [1], [0], [0]]), labels, 2,
        ...                                           groups=torch.tensor([0, 0, 1, 1]))
        >>> accuracy.overall, accuracy.interval()
        (0.75, (0.5, 1.0))
        """
        check_level(level, n_bootstrap)
        if self.group_counts is None:
            raise ValueError("no per-group counts: pass groups= to ProbeAccuracy.from_predictions or Probe.accuracy "
                             "(probe_layers does, one group per sequence)")
        totals = self.group_counts.sum(1).double()  # (groups, 2): counted, correct
        totals = totals[totals[:, 0] > 0]
        if not len(totals):
            raise ValueError("no counted entries to resample")
        picked = totals[resample(len(totals), n_bootstrap, torch.Generator().manual_seed(seed))].sum(1)
        lo, hi = bounds(picked[:, 1] / picked[:, 0], level)
        return lo.item(), hi.item()


@dataclasses.dataclass(frozen=True, eq=False)
class Probe:
    """A linear probe reading ``outputs`` categorical properties at once: ``logits = acts @ W + b``."""

    W: Float[Tensor, "d_in outputs classes"]
    """Weights, in the raw basis of the activations it reads."""
    b: Float[Tensor, "outputs classes"]
    """Biases."""
    hook_name: str | None = None
    """The hook point it reads, where known."""

    @property
    def d_in(self) -> int:
        return self.W.shape[0]

    @property
    def n_outputs(self) -> int:
        return self.W.shape[1]

    @property
    def n_classes(self) -> int:
        return self.W.shape[2]

    def logits(self, acts: Float[Tensor, "n d_in"]) -> Float[Tensor, "n outputs classes"]:
        """Class scores per output (log-probabilities up to a constant for an AdamW probe)."""
        if acts.ndim != 2 or acts.shape[1] != self.d_in:
            raise ValueError(f"the probe reads [n, {self.d_in}] activations, got {tuple(acts.shape)}")
        return torch.einsum("nd,doc->noc", acts.to(self.W.device, self.W.dtype), self.W) + self.b

    def predict(self, acts: Float[Tensor, "n d_in"]) -> Int[Tensor, "n outputs"]:
        """The predicted class of every output."""
        return self.logits(acts).argmax(-1)

    def accuracy(
        self,
        acts: Float[Tensor, "n d_in"],
        labels: Int[Tensor, "n outputs"],
        *,
        where: Bool[Tensor, "n outputs"] | None = None,
        groups: Int[Tensor, " n"] | None = None,
    ) -> ProbeAccuracy:
        """Accuracy on the labelled entries (label not -1) and, if given, only where ``where`` is True.

        Args:
            acts: activations, one row per labelled input.
            labels: true classes, -1 where unknown.
            where: entries to count, e.g. ``labels != 0`` for occupied squares only.
            groups: one id per row (e.g. its sequence), for :meth:`ProbeAccuracy.interval`.

        Returns:
            A :class:`ProbeAccuracy` (``.overall``, ``.per_output``, ...).
        """
        check_labels(labels, self.n_classes)
        _check_rows(acts, labels, self.d_in)
        if where is not None and where.shape != labels.shape:
            raise ValueError(f"where has shape {tuple(where.shape)}, labels {tuple(labels.shape)}")
        return ProbeAccuracy.from_predictions(self.predict(acts), labels.to(self.W.device), self.n_classes, where,
                                              groups)

    def directions(self) -> Float[Tensor, "outputs classes d_in"]:
        """Every class's probe direction per output, unit norm. A softmax (or one-hot least squares) probe is blind
        to a shift shared by all classes, so only differences of directions (:meth:`contrast`) are unambiguous."""
        return F.normalize(self.W.permute(1, 2, 0), dim=-1)

    def contrast(self, positive: int, negative: int) -> Float[Tensor, "outputs d_in"]:
        """The unit direction per output that raises class ``positive``'s score against ``negative``'s most
        (``W[:, o, positive] - W[:, o, negative]``, normalised), e.g. mine minus theirs to flip a square."""
        for cls in (positive, negative):
            if not 0 <= cls < self.n_classes:
                raise ValueError(f"class {cls} is not in [0, {self.n_classes})")
        return F.normalize((self.W[:, :, positive] - self.W[:, :, negative]).T, dim=-1)

    def to(self, device: str | torch.device) -> "Probe":
        """A copy on ``device``."""
        return dataclasses.replace(self, W=self.W.to(device), b=self.b.to(device))

    def save(self, path: str | Path) -> Path:
        """Write the probe to one safetensors file (weights, and its hook name as JSON metadata)."""
        path = Path(path)
        save_tensors(path, {"W": self.W, "b": self.b}, metadata={"probe": json.dumps({"hook_name": self.hook_name})})
        return path

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> "Probe":
        """Read a probe written by :meth:`save` (see :func:`load_probe`)."""
        return load_probe(path, device=device)


def load_probe(path: str | Path, *, device: str | torch.device = "cpu") -> Probe:
    """Read a probe written by :meth:`Probe.save`. Raises :class:`~mi_toolkit.core.io.CheckpointError` if the file
    is missing, unreadable or not a probe."""
    tensors, metadata = load_tensors(path, device=device)
    if "probe" not in metadata or set(tensors) != {"W", "b"}:
        raise CheckpointError(f"{path} is not a probe file (expected tensors W and b and 'probe' metadata)")
    return Probe(tensors["W"], tensors["b"], json.loads(metadata["probe"])["hook_name"])


def check_labels(labels: Tensor, n_classes: int) -> None:
    """Raise a ``ValueError`` unless ``labels`` are ``[n, outputs]`` class indices in ``[0, n_classes)`` or -1."""
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    if labels.ndim != 2 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices of shape [n, outputs], got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if labels.numel() and (labels.min() < -1 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, n_classes={n_classes}) or be -1 (ignored), got values in "
                         f"[{labels.min().item()}, {labels.max().item()}]")


def _check_rows(acts: Tensor, labels: Tensor, d_in: int | None = None) -> None:
    if acts.ndim != 2 or not acts.dtype.is_floating_point or (d_in is not None and acts.shape[1] != d_in):
        raise ValueError(f"acts must be a float tensor of shape [n, {d_in or 'd_in'}], got {acts.dtype} "
                         f"{tuple(acts.shape)}")
    if len(labels) != len(acts):
        raise ValueError(f"{len(labels)} rows of labels for {len(acts)} rows of activations")


def fit_probe(
    acts: Float[Tensor, "n d_in"],
    labels: Int[Tensor, "n outputs"],
    n_classes: int,
    config: ProbeConfig = ProbeConfig(),
    *,
    hook_name: str | None = None,
    progress: bool = False,
) -> Probe:
    """Fit one linear probe for every output at once.

    Args:
        acts: activations, one row per input (e.g. from :func:`mi_toolkit.core.activations.collect_activations`).
        labels: the class of each output on each row, in ``[0, n_classes)``; -1 leaves that entry out of the fit.
            Each output is fitted on its own labelled rows only (ignored rows are not treated as a class).
        n_classes: number of classes per output.
        config: the method and its settings (:class:`ProbeConfig`).
        hook_name: recorded on the probe.
        progress: show a progress bar (AdamW).

    Returns:
        The :class:`Probe`, on the device of ``acts``.

    Raises:
        ValueError: shapes that do not match, labels outside ``[-1, n_classes)``, an output without labels.

    >>> x = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    >>> probe = fit_probe(x, (x[:, :2] > 0).long(), n_classes=2)
    >>> probe.accuracy(x, (x[:, :2] > 0).long()).overall > 0.95
    True
    """
    check_labels(labels, n_classes)
    _check_rows(acts, labels)
    unlabelled = (~(labels >= 0).any(0)).nonzero().squeeze(1).tolist()
    if unlabelled:
        raise ValueError(f"outputs {unlabelled} have no labelled rows to fit on")
    labels = labels.to(acts.device)
    keep = (labels >= 0).any(1)  # rows ignored by every output take no part at all
    if not keep.all():
        acts, labels = acts[keep], labels[keep]
    if config.method == "ridge":
        W, b = fit_ridge(acts, labels, n_classes, config.ridge)
    else:
        W, b = fit_adamw(acts, labels, n_classes, lr=config.lr, weight_decay=config.weight_decay,
                         epochs=config.epochs, batch_size=config.batch_size, seed=config.seed, progress=progress)
    return Probe(W, b, hook_name)

