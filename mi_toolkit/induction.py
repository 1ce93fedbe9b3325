"""Induction heads: a repeated-random-token task, a 2-layer attention-only model, and per-head attention scores.

On random tokens, the next token is predictable only inside a repeated segment: after ``... A B ... A`` predict
``B``. A 2-layer attention-only transformer learns this with two heads (Olsson et al. 2022): a layer-0
*previous-token head* writes "the token before me was A" at the position of ``B``; a layer-1 *induction head* at
the second ``A`` attends to that position (query "A" matches key "previous token A") and copies ``B``.

Head scores follow TransformerLens's ``head_detector`` ("mul" measure): a detection pattern marks the
(query, key) pairs the head type should attend to, and the score is the attention on marked pairs divided by the
total attention. ``rows="all"`` divides by the attention of every query row (TL's exact number; a head can reach
at most the fraction of rows that have a marked key, e.g. ~0.5 for induction on ``[BOS, A, A]``);
``rows="marked"`` (default) divides by the attention of rows that have a marked key only, i.e. the mean attention
on the pattern where it is defined, the usual "induction score" that reaches 1 for a perfect head.
"""

import dataclasses

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mi_toolkit._tl import HookedTransformer, HookedTransformerConfig, get_act_name, run_until
from mi_toolkit.models import build_model
from mi_toolkit.training import TrainConfig, TrainResult, train

__all__ = [
    "HEAD_TYPES",
    "InductionRun",
    "InductionTask",
    "detection_pattern",
    "head_scores",
    "induction_model_config",
    "make_induction_model",
    "model_head_scores",
    "repeated_tokens",
    "train_induction_model",
]

HeadType = str  # one of HEAD_TYPES (a plain str, so a bad value gets a ValueError)
HEAD_TYPES: tuple[str, ...] = ("induction", "previous_token", "duplicate_token")
BOS = 0
"""Token 0 starts every sequence; random tokens are drawn from ``1 .. d_vocab - 1``."""


def repeated_tokens(
    batch: int, seg_len: int, d_vocab: int, *, seed: int = 0, device: str | torch.device = "cpu"
) -> Int[Tensor, "batch pos"]:
    """``[BOS, r_1 .. r_L, r_1 .. r_L]``: a random segment (distinct tokens) repeated once.

    Args:
        batch: number of sequences.
        seg_len: L, the segment length (at most ``d_vocab - 1``, so the tokens can be distinct).
        d_vocab: vocabulary size; tokens come from ``1 .. d_vocab - 1``.
        seed: seed of the draw.
        device: where the tokens live.

    Returns:
        Tokens of length ``2 * seg_len + 1``.
    """
    if not 1 <= seg_len < d_vocab:
        raise ValueError(f"seg_len must lie in [1, d_vocab - 1] = [1, {d_vocab - 1}], got {seg_len}")
    gen = torch.Generator().manual_seed(seed)
    # Distinct tokens inside a segment: the only duplicates are the intended repeats.
    segment = torch.argsort(torch.rand(batch, d_vocab - 1, generator=gen), dim=1)[:, :seg_len] + 1
    bos = torch.full((batch, 1), BOS, dtype=torch.long)
    return torch.cat([bos, segment, segment], dim=1).to(device)


@dataclasses.dataclass(frozen=True)
class InductionTask:
    """Random token sequences, each with one segment that occurs twice; loss on the predictable positions.

    A sequence is ``BOS`` then uniform random tokens; a segment of random length in ``[min_seg, max_seg]`` at a
    random place is copied to a random later place (the copies do not overlap). Lengths and places vary per
    sequence, so the model cannot find the copy by position alone and must learn induction. The loss is the
    next-token cross-entropy at the positions whose next token is a repeat (all others are unpredictable).

    It follows the task protocol of :func:`mi_toolkit.training.train`.

    Args:
        d_vocab: vocabulary size (token 0 is BOS).
        seq_len: length of a training sequence (at most the model's ``n_ctx``).
        batch_size: sequences per training step.
        min_seg: shortest repeated segment (>= 2).
        max_seg: longest repeated segment (``2 * max_seg < seq_len``).
        eval_seg_len: L of the ``[BOS, A, A]`` evaluation sequences (``2 * L + 1 < n_ctx`` to match TL's
            head detector, which requires the sequence to be shorter than the context).
        eval_batch: number of evaluation sequences.
        seed: seeds the training batches (batch ``s`` depends on ``seed`` and ``s`` only) and the evaluation set.
        device: where the tokens live.
    """

    d_vocab: int = 64
    seq_len: int = 32
    batch_size: int = 32
    min_seg: int = 4
    max_seg: int = 15
    eval_seg_len: int = 15
    eval_batch: int = 32
    seed: int = 0
    device: str | torch.device = "cpu"

    def __post_init__(self):
        if self.d_vocab < 3:
            raise ValueError(f"d_vocab must be >= 3, got {self.d_vocab}")
        if not 2 <= self.min_seg <= self.max_seg or 2 * self.max_seg >= self.seq_len:
            raise ValueError(
                f"need 2 <= min_seg <= max_seg and 2 * max_seg < seq_len; got min_seg={self.min_seg}, "
                f"max_seg={self.max_seg}, seq_len={self.seq_len}"
            )
        if not 1 <= self.eval_seg_len < self.d_vocab:
            raise ValueError(f"eval_seg_len must lie in [1, d_vocab - 1], got {self.eval_seg_len}")
        if self.batch_size < 1 or self.eval_batch < 1:
            raise ValueError("batch_size and eval_batch must be >= 1")

    def check_model(self, model: HookedTransformer) -> None:
        """Raise ``ValueError`` if ``model`` cannot read this task's sequences."""
        cfg = model.cfg
        if cfg.d_vocab < self.d_vocab or cfg.n_ctx < max(self.seq_len, 2 * self.eval_seg_len + 2):
            raise ValueError(
                f"model (d_vocab={cfg.d_vocab}, n_ctx={cfg.n_ctx}) does not fit the task: needs d_vocab >= "
                f"{self.d_vocab} and n_ctx >= {max(self.seq_len, 2 * self.eval_seg_len + 2)}"
            )

    def eval_tokens(self) -> Int[Tensor, "batch pos"]:
        """The fixed evaluation sequences ``[BOS, A, A]``."""
        return repeated_tokens(self.eval_batch, self.eval_seg_len, self.d_vocab, seed=self.seed + 1,
                               device=self.device)

    @property
    def repeat_positions(self) -> slice:
        """Positions of ``[BOS, A, A]`` whose next token is a repeat (for ``metrics.loss(..., positions=)``)."""
        return slice(self.eval_seg_len + 1, None)

    def patching_pair(self, batch: int = 8, *, seed: int = 99) -> tuple[Tensor, Tensor]:
        """Clean and corrupted inputs for patching the induction circuit.

        Clean: the first ``batch`` evaluation sequences ``[BOS, A, A]``. Corrupted: other sequences of the same
        form ``[BOS, B, B]``, on which the model predicts ``B``. A patch that restores the prediction of ``A``'s
        repeat must carry information about ``A`` through the circuit.

        (Corrupting only the first copy, ``[BOS, B, A]``, is a sharper question but a harder one for attribution
        patching: restoring the previous-token head's output there moves the induction head's attention all at
        once, through a saturated softmax, which a first-order estimate misses.)

        Args:
            batch: number of sequences.
            seed: seed of the corrupted sequences.

        Returns:
            ``(clean, corrupted)``, each ``[batch, 2 * eval_seg_len + 1]``.
        """
        clean = self.eval_tokens()[:batch]
        corrupted = repeated_tokens(len(clean), self.eval_seg_len, self.d_vocab, seed=seed, device=self.device)
        return clean, corrupted

    # --- the training-task protocol of mi_toolkit.training ---
    def train_batch(self, step: int) -> tuple[Tensor, Tensor]:
        """Tokens ``[batch_size, seq_len]`` and the mask of positions whose next token is a repeat."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        b, n = self.batch_size, self.seq_len
        tokens = torch.randint(1, self.d_vocab, (b, n), generator=gen)
        tokens[:, 0] = BOS
        seg = torch.randint(self.min_seg, self.max_seg + 1, (b,), generator=gen)
        # First copy starts in [1, n - 2 seg], second in [first + seg, n - seg]: uniform draws scaled per row.
        first = 1 + (torch.rand(b, generator=gen) * (n - 2 * seg)).long()
        second = first + seg + (torch.rand(b, generator=gen) * (n - seg - (first + seg) + 1)).long()
        pos = torch.arange(n)
        in_copy = (pos >= second[:, None]) & (pos < (second + seg)[:, None])  # (batch, pos)
        source = torch.where(in_copy, pos - (second - first)[:, None], pos)
        tokens = tokens.gather(1, source)
        # Logits at position i predict token i + 1: predictable when i + 1 is in the copy, except its first token.
        predictable = in_copy[:, 1:] & (pos[1:] > second[:, None])
        return tokens.to(self.device), predictable.to(self.device)

    def loss(self, model: HookedTransformer, batch: tuple[Tensor, Tensor]) -> Tensor:
        tokens, predictable = batch
        logits = model(tokens)[:, :-1]  # (batch, pos - 1, d_vocab_out)
        return F.cross_entropy(logits[predictable], tokens[:, 1:][predictable])

    def evaluate(self, model: HookedTransformer) -> dict[str, float]:
        """Loss on the repeated half of ``[BOS, A, A]`` and the best layer-0 / later-layer head scores."""
        tokens = self.eval_tokens()
        n_layers = model.cfg.n_layers
        names = [get_act_name("pattern", layer) for layer in range(n_layers)]
        logits, cache = model.run_with_cache(tokens, names_filter=names)
        half = self.eval_seg_len + 1
        repeat_loss = F.cross_entropy(logits[:, half:-1].flatten(0, 1), tokens[:, half + 1 :].flatten())
        patterns = torch.stack([cache[name] for name in names], dim=1)  # (batch, layer, head, query, key)
        induction = head_scores(patterns, detection_pattern(tokens, "induction"))
        previous = head_scores(patterns, detection_pattern(tokens, "previous_token"))
        return {
            "repeat_loss": repeat_loss.item(),
            "induction_score": induction[1:].max().item() if n_layers > 1 else induction.max().item(),
            "prev_token_score": previous[0].max().item(),
        }


def detection_pattern(
    tokens: Int[Tensor, "batch pos"], head_type: HeadType
) -> Bool[Tensor, "batch query_pos key_pos"]:
    """Where a head of ``head_type`` should attend, per sequence, as in TransformerLens's ``head_detector``.

    - ``"previous_token"``: key = query - 1.
    - ``"duplicate_token"``: an earlier key with the same token as the query.
    - ``"induction"``: key = j + 1 for every earlier j whose token equals the query's (the token after a previous
      occurrence).

    Args:
        tokens: the input sequences.
        head_type: one of :data:`HEAD_TYPES`.

    Returns:
        A boolean mask, lower triangular (keys never after the query).
    """
    n = tokens.shape[1]
    before = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)  # key < query
    if head_type == "previous_token":
        return (torch.ones_like(before).tril(-1) & ~torch.ones_like(before).tril(-2)).expand(len(tokens), n, n)
    duplicate = (tokens[:, :, None] == tokens[:, None, :]) & before  # (batch, query, key)
    if head_type == "duplicate_token":
        return duplicate
    if head_type == "induction":
        # Shift keys right by one: query i marks key j + 1 if token j == token i (j < i, so j + 1 <= i).
        return F.pad(duplicate[:, :, :-1], (1, 0))
    raise ValueError(f"unknown head type {head_type!r}; expected one of {HEAD_TYPES}")


def head_scores(
    patterns: Float[Tensor, "batch layer head_index query_pos key_pos"],
    detection: Bool[Tensor, "batch query_pos key_pos"],
    *,
    rows: str = "marked",
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> Float[Tensor, "layer head_index"]:
    """Attention on the detection pattern, per head, averaged over sequences (TL's ``"mul"`` error measure).

    Args:
        patterns: attention patterns of every layer (e.g. stacked ``cache["pattern", layer]``).
        detection: from :func:`detection_pattern`.
        rows: ``"marked"`` divides by the attention of query rows with at least one marked key (a perfect head
            scores 1); ``"all"`` by the attention of all rows, which is exactly TransformerLens's
            ``detect_head`` score (averaged over sequences as TL does for a list of prompts).
        exclude_bos: ignore attention to position 0 (TL's option of the same name).
        exclude_current_token: ignore attention to the query's own position (TL's option).

    Returns:
        The score of every head.
    """
    attention = patterns
    n = patterns.shape[-1]
    keep = torch.ones(n, n, dtype=torch.bool, device=patterns.device)
    if exclude_bos:
        keep[:, 0] = False
    if exclude_current_token:
        keep.fill_diagonal_(False)
    attention = attention * keep
    mask = detection[:, None, None].to(attention.dtype)  # (batch, 1, 1, query, key)
    on_pattern = (attention * mask).sum(-1)  # (batch, layer, head, query)
    total = attention.sum(-1)
    if rows == "marked":
        row_has_mark = detection.any(-1)[:, None, None].to(attention.dtype)  # (batch, 1, 1, query)
        on_pattern, total = on_pattern * row_has_mark, total * row_has_mark
    elif rows != "all":
        raise ValueError(f"rows must be 'marked' or 'all', got {rows!r}")
    return (on_pattern.sum(-1) / total.sum(-1)).mean(0)


def model_head_scores(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    head_type: HeadType,
    **kwargs,
) -> Float[Tensor, "layer head_index"]:
    """:func:`head_scores` of ``model``'s heads on ``tokens`` (one forward pass caching the patterns only).

    Args:
        model: any ``HookedTransformer``.
        tokens: the input, e.g. :func:`repeated_tokens` for induction and previous-token heads.
        head_type: one of :data:`HEAD_TYPES`.
        **kwargs: ``rows``, ``exclude_bos``, ``exclude_current_token`` of :func:`head_scores`.

    Returns:
        The score of every head, ``[n_layers, n_heads]``.

    >>> model = make_induction_model(d_model=16, n_heads=2, d_head=8)
    >>> model_head_scores(model, repeated_tokens(2, 5, 64), "induction").shape
    torch.Size([2, 2])
    """
    names = [get_act_name("pattern", layer) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        cache = run_until(model, tokens, names)
    patterns = torch.stack([cache[name] for name in names], dim=1)
    return head_scores(patterns, detection_pattern(tokens, head_type), **kwargs)


def induction_model_config(d_vocab: int = 64, n_ctx: int = 32, **overrides) -> HookedTransformerConfig:
    """A 2-layer attention-only transformer: d_model 64, 4 heads of 16, rotary positions, no LayerNorm.

    Rotary positions make "attend to the previous token" one relative offset at every position, and without
    LayerNorm attention can sharpen quickly: with the default training, a layer-0 head reaches a previous-token
    score above 0.9 within a few hundred steps (learned absolute positions and LayerNorm took several times
    longer in our measurements, with layer-0 scores stuck near 0.6-0.75 after 1,000 steps).

    Args:
        d_vocab: vocabulary size (input and output).
        n_ctx: context length.
        **overrides: any ``HookedTransformerConfig`` field.
    """
    fields = dict(
        n_layers=2,
        d_model=64,
        n_heads=4,
        d_head=16,
        attn_only=True,
        normalization_type=None,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        positional_embedding_type="rotary",
    )
    fields.update(overrides)
    if fields["positional_embedding_type"] == "rotary":
        fields.setdefault("rotary_dim", fields["d_head"])
    return HookedTransformerConfig(**fields)


def make_induction_model(
    d_vocab: int = 64, n_ctx: int = 32, *, seed: int = 0, device: str | torch.device = "cpu", **overrides
) -> HookedTransformer:
    """Build the (untrained) induction model of :func:`induction_model_config` with a seeded initialisation."""
    return build_model(induction_model_config(d_vocab, n_ctx, **overrides), seed=seed, device=device)


@dataclasses.dataclass
class InductionRun:
    """A trained induction model and its training record."""

    model: HookedTransformer
    task: InductionTask
    result: TrainResult


DEFAULT_TRAIN = TrainConfig(steps=600, lr=1e-2, weight_decay=0.01, betas=(0.9, 0.98), warmup_steps=50,
                            log_every=100, checkpoint_every=10_000)


def train_induction_model(
    task: InductionTask | None = None,
    config: TrainConfig = DEFAULT_TRAIN,
    *,
    seed: int = 0,
    run_dir=None,
    progress: bool = True,
    **model_overrides,
) -> InductionRun:
    """Train :func:`make_induction_model` on ``task`` with :func:`mi_toolkit.training.train`.

    With the defaults this takes well under a minute on a laptop CPU and ends with a layer-1 induction head and a
    layer-0 previous-token head both scoring above 0.9 (``result.history[-1]``).

    Args:
        task: the data; default ``InductionTask()``.
        config: optimiser settings.
        seed: seed of the model's initialisation (the data's seed is ``task.seed``).
        run_dir: optional run directory for metrics and checkpoints (see :func:`mi_toolkit.training.train`).
        progress: show a progress bar.
        **model_overrides: fields of :func:`induction_model_config`.

    Returns:
        The model (in eval mode), the task and the training result.
    """
    task = InductionTask() if task is None else task
    fields = dict(d_vocab=task.d_vocab, n_ctx=max(task.seq_len, 2 * task.eval_seg_len + 2))
    fields.update(model_overrides)
    model = make_induction_model(seed=seed, device=task.device, **fields)
    task.check_model(model)
    result = train(model, task, config, run_dir, progress=progress)
    model.eval()
    return InductionRun(model, task, result)
