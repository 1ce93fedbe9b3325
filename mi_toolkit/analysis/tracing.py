"""Causal tracing (Meng et al. 2022) and attention knockout (Geva et al. 2023): where a model recalls a fact.

Causal tracing runs the prompt clean, then with Gaussian noise (``noise`` standard deviation, by convention 3 x the
standard deviation of the subject tokens' embeddings: :func:`noise_level`) added to the subject tokens' embeddings,
then noised again with one clean state restored: the residual stream after a layer, or the output of the MLP or of
attention in a window of layers around it, at one position. The indirect effect of a state is
``P_restored(answer) - P_noised(answer)``; the total effect is ``P_clean(answer) - P_noised(answer)``.

The sweep runs on :mod:`mi_toolkit.analysis.patching`'s engine: the noised batch (``n_samples`` noise draws per
prompt, and many prompts of one template at once with :func:`causal_traces`) is repeated once per restored state,
about 256 rows per forward pass, and one hook per layer writes the clean state into the copies that restore it.
Each pass restarts from the noised run at the first layer and the first position its restores touch, with the
noised keys and values of the earlier positions as a frozen key-value cache, so a pass costs what remains of the
model after its restores. A lone restore of the residual stream or of the MLP's output (window 1) in layer ``l``
changes only the residual stream after layer ``l``, at its position, so it enters the model at layer ``l + 1`` from
that changed stream, with no hooks: the restores of every layer at a group of positions share one pass, each block
running on the copies that have entered by then, and the last block runs on the last position alone (the only one
the answer reads; its keys and values at the earlier positions are computed from the changed stream). Restores
that cannot change the answer in a causal model are not run and score ``P_noised`` exactly: those before the first
subject position (the noise has not reached them) and those in the last layer before the last position.

Attention knockout blocks the answer position from attending to chosen positions (the subject) in a window of
layers, one window per copy in one forward pass, and records the relative change of ``P(answer)``.
"""

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_toolkit.analysis.patching._restart import CorruptedRun, patch_hook
from mi_toolkit.core.architectures import supports
from mi_toolkit.core.tl import HookedTransformer, get_act_name

__all__ = ["KINDS", "Knockout", "Trace", "attention_knockout", "causal_trace", "causal_traces", "noise_level",
           "trace_noise", "window_layers"]

KINDS = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}
"""What a trace restores, and the activation it names: the residual stream after each layer, the MLP's output, or
attention's output."""


@dataclasses.dataclass(frozen=True)
class Trace:
    """One causal trace: ``scores[layer, pos]`` is ``P(answer)`` with the subject noised and that state restored
    (mean over the noise samples)."""

    kind: str
    window: int
    scores: Float[Tensor, "layer pos"]
    clean_prob: float
    noised_prob: float
    subject_positions: tuple[int, ...]

    @property
    def indirect_effect(self) -> Float[Tensor, "layer pos"]:
        """``P_restored - P_noised`` for every restored state."""
        return self.scores - self.noised_prob

    @property
    def total_effect(self) -> float:
        """``P_clean - P_noised``."""
        return self.clean_prob - self.noised_prob

    @property
    def peak(self) -> tuple[int, int]:
        """``(layer, position)`` of the largest indirect effect."""
        index = int(self.scores.argmax())
        return index // self.scores.shape[1], index % self.scores.shape[1]


@dataclasses.dataclass(frozen=True)
class Knockout:
    """Attention knockout: ``relative_change[layer]`` is ``P_blocked / P_clean - 1`` with the edges from ``query``
    to ``blocked`` cut in the window of layers around ``layer``."""

    relative_change: Float[Tensor, " layer"]
    clean_prob: float
    blocked: tuple[int, ...]
    query: int
    window: int


def noise_level(model: HookedTransformer, tokens: Int[Tensor, " n"], factor: float = 3.0) -> float:
    """``factor`` x the standard deviation of the embeddings of ``tokens`` (e.g. every subject's name tokens)."""
    _check_vocab(model, tokens)
    return factor * model.W_E[tokens].std().item()


def trace_noise(n_samples: int, n_subject: int, d_model: int, noise: float, seed: int) -> Float[Tensor, "sample n d"]:
    """The noise every trace with this ``seed`` adds: ``noise * N(0, 1)`` of shape ``[n_samples, n_subject,
    d_model]``, drawn on the CPU from ``torch.Generator().manual_seed(seed)``."""
    gen = torch.Generator().manual_seed(seed)
    return noise * torch.randn(n_samples, n_subject, d_model, generator=gen)


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """The layers restored (or knocked out) for ``layer``: ``window`` layers around it, as in ROME's code."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def causal_trace(
    model: HookedTransformer,
    tokens: Int[Tensor, " pos"],
    subject_positions: Sequence[int],
    answer: int,
    *,
    kind: str = "resid",
    window: int = 1,
    noise: float | None = None,
    n_samples: int = 10,
    seed: int = 0,
    max_rows: int = 2048,
) -> Trace:
    """Trace one prompt: restore each state ``(layer, position)`` of ``kind`` in turn into the noised run.

    Args:
        model: any ``HookedTransformer``.
        tokens: one prompt; the answer is read at its last position.
        subject_positions: the positions whose token embeddings are noised.
        answer: the token whose probability is traced.
        kind: ``"resid"`` (window 1 only), ``"mlp"`` or ``"attn"`` (:data:`KINDS`).
        window: for ``"mlp"`` / ``"attn"``, restore this many layers around each layer (:func:`window_layers`).
        noise: standard deviation of the noise (default ``noise_level`` of the prompt's subject tokens).
        n_samples: noise draws; each restore is scored by the mean probability over them.
        seed: seeds the noise (:func:`trace_noise`).
        max_rows: rows (restores x samples) per forward pass.

    Returns:
        A :class:`Trace` with ``scores`` ``[n_layers, pos]``.

    Raises:
        ValueError: unknown kind, bad window, positions or tokens out of range, before any forward pass.
    """
    tokens, _ = _check(model, tokens, subject_positions, answer)
    return causal_traces(model, tokens[None], subject_positions, [answer], kind=kind, window=window, noise=noise,
                         n_samples=n_samples, seed=seed, max_rows=max_rows)[0]


@torch.no_grad()
def causal_traces(
    model: HookedTransformer,
    tokens: Int[Tensor, "prompt pos"],
    subject_positions: Sequence[int],
    answers: Sequence[int],
    *,
    kind: str = "resid",
    window: int = 1,
    noise: float | None = None,
    n_samples: int = 10,
    seed: int = 0,
    max_rows: int = 2048,
) -> list[Trace]:
    """:func:`causal_trace` of many prompts of one length with the subject at the same positions (one template, as
    in an average over facts), sharing forward passes: prompt ``i`` gets the trace ``causal_trace`` gives it with
    ``seed + i``.

    Args:
        tokens: ``[n_prompts, pos]``.
        answers: the traced token of each prompt.
        noise: one standard deviation for all prompts (default: each prompt's ``noise_level`` of its own subject
            tokens, as ``causal_trace`` does).
        max_rows: rows (restores x prompts x samples) per forward pass; prompts are taken in groups that fit.
        The others: as :func:`causal_trace`.

    Returns:
        One :class:`Trace` per prompt.

    Raises:
        ValueError: as :func:`causal_trace`, and for ``tokens`` that are not ``[n_prompts, pos]`` or a number of
            answers that differs from the number of prompts, before any forward pass.
    """
    if tokens.ndim != 2 or not len(tokens):
        raise ValueError(f"expected prompts of one length, tokens of shape [n_prompts, pos], got {tuple(tokens.shape)}")
    answers = [int(a) for a in answers]
    if len(answers) != len(tokens):
        raise ValueError(f"{len(answers)} answers for {len(tokens)} prompts")
    subject = ()
    for prompt, answer in zip(tokens, answers):
        prompt, subject = _check(model, prompt, subject_positions, answer)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if window < 1 or (kind == "resid" and window != 1):
        raise ValueError(f"window must be >= 1 (and 1 for kind='resid'), got {window}")
    if n_samples < 1 or max_rows < n_samples:
        raise ValueError(f"need n_samples >= 1 and max_rows >= n_samples, got {n_samples}, {max_rows}")
    tokens = tokens.to(model.W_E.device)
    group = max_rows // n_samples
    return [trace for first in range(0, len(tokens), group)
            for trace in _trace_group(model, tokens[first : first + group], subject, answers[first : first + group],
                                      kind, window, noise, n_samples, seed + first, max_rows)]


def _trace_group(model, tokens, subject, answers, kind, window, noise, n_samples, seed, max_rows) -> list[Trace]:
    """The traces of prompts that fit one forward pass together (checked input)."""
    n_layers, (n_prompts, n_pos), device = model.cfg.n_layers, tokens.shape, tokens.device
    names = [get_act_name(KINDS[kind], layer) for layer in range(n_layers)]
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    answers = torch.tensor(answers, device=device)
    clean_probs = logits[:, -1].softmax(-1).gather(1, answers[:, None])[:, 0].tolist()
    rows = n_prompts * n_samples  # the noised batch: prompt-major, a row per noise sample
    clean = [cache[name] for name in names]  # each (prompt, pos, d_model), shared by the prompt's samples
    index = torch.tensor(subject, device=device)
    levels = [noise if noise is not None else noise_level(model, prompt[index]) for prompt in tokens]
    draws = torch.cat([trace_noise(n_samples, len(subject), model.cfg.d_model, level, seed + i)
                       for i, level in enumerate(levels)]).to(device, model.cfg.dtype)  # (row, subj, d_model)

    def add_noise(embed: Tensor, hook) -> Tensor:  # on the noised batch, or copies of it
        embed = embed.clone()
        embed[:, index] += draws.repeat(len(embed) // rows, 1, 1)
        return embed

    # The noised run, which restored passes restart from: in the layer of their first restore, at the position of
    # their first restore, with the noised keys and values before it (the patching engine's restart).
    # A lone restore of the residual stream or the MLP's output in layer l changes only the residual stream after
    # layer l at its position, so its pass starts at layer l + 1 from that changed stream.
    after = window == 1 and kind in ("resid", "mlp") and supports(model, "kv_restart")
    kept = [get_act_name(act, layer) for layer in range(n_layers) for act in ("resid_post", "mlp_out")
            if after and (act == "resid_post" or kind == "mlp")]
    with model.hooks(fwd_hooks=[("hook_embed", add_noise)]):
        run = CorruptedRun.build(model, tokens.repeat_interleave(n_samples, 0), list(range(n_layers)), kept)
        # A model that cannot restart gets full passes from the tokens, and no noised run from build.
        noised = run.logits if run.logits is not None else model(run.tokens)
    row_answers = answers.repeat_interleave(n_samples)

    def answer_probs(logits: Tensor) -> Tensor:
        """``[copies, prompt]``: P(answer) at the last position (``logits`` ``[rows, pos, vocab]`` or only the last
        position's ``[rows, vocab]``), averaged over each prompt's noise samples."""
        probs = (logits[:, -1] if logits.ndim == 3 else logits).softmax(-1)
        probs = probs.gather(1, row_answers.repeat(len(logits) // rows)[:, None])
        return probs.view(-1, n_prompts, n_samples).mean(2)

    noised_probs = answer_probs(noised)[0]

    # Restores (layer, pos), no-ops left out: they keep P_noised. Those are the restores before the first subject
    # position (the noise has not reached them), and those only in the last layer before the last position (nothing
    # after them reads them).
    scores = noised_probs.cpu()[:, None, None].repeat(1, n_layers, n_pos)  # (prompt, layer, pos)
    # Restores per pass: about 256 rows, or a quarter of the positions if that is more (so that one prompt's trace
    # takes few passes), and at most max_rows rows. Restores entering after their layer share a pass across layers,
    # so a pass holds that many restores per layer.
    per_pass = max(1, min(max_rows // rows, max(-(-n_pos // 4), 256 // rows) * (n_layers if after else 1)))
    useful = lambda layer, pos: window_layers(layer, window, n_layers)[0] < n_layers - 1 or pos == n_pos - 1  # noqa: E731
    positions = range(min(subject), n_pos)
    if after:  # whole positions while they fit, every layer's restores entering after their layer; in layer order
        passes, current = [], []
        for pos in positions:
            at = [(layer, pos) for layer in range(n_layers) if useful(layer, pos)]
            if current and len(current) + len(at) > per_pass:
                passes.append(current)
                current = []
            while len(at) > per_pass:  # one position's layers over several passes
                passes.append(at[:per_pass])
                at = at[per_pass:]
            current += at
        passes = [sorted(chunk) for chunk in passes + [current] if chunk]
    else:  # grouped by the first layer they touch, in position order
        passes = [chunk for start in range(n_layers)
                  for restores in [[(layer, pos) for pos in positions for layer in range(n_layers)
                                    if window_layers(layer, window, n_layers)[0] == start and useful(layer, pos)]]
                  for chunk in (restores[offset : offset + per_pass] for offset in range(0, len(restores), per_pass))]
    for chunk in passes:
        first = min(pos for _, pos in chunk) if run.kv is not None else 0  # no restart: full passes from 0
        if after:
            logits = _restored_after(model, run, kind, chunk, first, clean, n_samples)
        else:
            start = window_layers(chunk[0][0], window, n_layers)[0]
            # (layer, copy, 1, pos, 1): where each copy restores
            masks = torch.zeros(n_layers, len(chunk), 1, n_pos - first, 1, dtype=torch.bool)
            for c, (layer, pos) in enumerate(chunk):
                masks[list(window_layers(layer, window, n_layers)), c, 0, pos - first] = True
            masks = masks.to(device)
            hooks = [(names[layer], patch_hook(clean[layer][:, first:], masks[layer], len(chunk), n_samples))
                     for layer in range(n_layers) if masks[layer].any()]
            logits = run.logits_with(model, start, first, len(chunk), [("hook_embed", add_noise), *hooks])
        probs = answer_probs(logits).cpu()
        for c, (layer, pos) in enumerate(chunk):
            scores[:, layer, pos] = probs[c]
    return [Trace(kind, window, scores[i], clean_probs[i], noised_probs[i].item(), subject)
            for i in range(n_prompts)]


def _restored_after(model, run: CorruptedRun, kind: str, chunk, first: int, clean: list[Tensor],
                    n_samples: int) -> Tensor:
    """Last-position logits of the copies that each restore, at one position, the residual stream after a layer
    (``kind`` ``"resid"``) or the output of its MLP (``"mlp"``, which adds clean minus noised output there):
    ``chunk`` lists them as ``(layer, pos)`` in layer order, and each enters the model after its layer, from
    position ``first``, in one pass."""
    (n_prompts, n_pos, d_model), device = clean[0].shape, clean[0].device
    width = n_pos - first
    shape = (1, n_prompts, n_samples, width, d_model)
    entering = {}
    for layer in sorted({layer for layer, _ in chunk}):
        at = [pos for restored, pos in chunk if restored == layer]
        mask = torch.zeros(len(at), 1, 1, width, 1, dtype=torch.bool)  # (copy, prompt, sample, pos, d_model)
        mask[torch.arange(len(at)), 0, 0, torch.tensor(at) - first] = True
        mask = mask.to(device)
        noised = run.acts[get_act_name("resid_post", layer)][:, first:].reshape(shape)
        restored = clean[layer][:, first:].reshape(1, n_prompts, 1, width, d_model)
        if kind == "resid":
            resid = torch.where(mask, restored, noised)
        else:
            resid = noised + mask * (restored - run.acts[get_act_name("mlp_out", layer)][:, first:].reshape(shape))
        entering[layer + 1] = resid.flatten(0, 2)
    return run.final_logits(model, first, entering)


@torch.no_grad()
def attention_knockout(
    model: HookedTransformer,
    tokens: Int[Tensor, " pos"],
    blocked: Sequence[int],
    answer: int,
    *,
    query: int = -1,
    window: int = 1,
) -> Knockout:
    """Block ``query`` (default the last position) from attending to ``blocked`` in every head of a window of
    layers, for the window around each layer in turn (one forward pass: one copy per layer).

    Args:
        model: any ``HookedTransformer``.
        tokens: one prompt.
        blocked: key positions cut off (e.g. the subject's).
        answer: the token whose probability is measured.
        query: the attending position.
        window: layers per knockout (:func:`window_layers`).

    Returns:
        A :class:`Knockout` with the relative change of ``P(answer)`` per layer.
    """
    tokens, blocked = _check(model, tokens, blocked, answer)
    n_layers, n_pos = model.cfg.n_layers, len(tokens)
    query = query % n_pos
    if query in blocked or max(blocked) > query or window < 1:
        raise ValueError(f"blocked positions {blocked} must precede the query {query}; window must be >= 1")
    clean_prob = model(tokens[None])[0, -1].softmax(-1)[answer].item()
    index = torch.tensor(blocked, device=tokens.device)

    def block(rows: list[int]):
        def hook(scores: Tensor, hook) -> Tensor:  # (batch, head_index, query_pos, key_pos)
            scores = scores.clone()
            cut = scores[rows, :, query]
            cut[..., index] = float("-inf")
            scores[rows, :, query] = cut
            return scores

        return hook

    hooks = [(get_act_name("attn_scores", layer),
              block([row for row in range(n_layers) if layer in window_layers(row, window, n_layers)]))
             for layer in range(n_layers)]
    with model.hooks(fwd_hooks=hooks):
        probs = model(tokens[None].expand(n_layers, -1))[:, -1].softmax(-1)[:, answer]
    return Knockout((probs / clean_prob - 1).cpu(), clean_prob, blocked, query, window)


def _check(model, tokens, positions, answer) -> tuple[Tensor, tuple[int, ...]]:
    if tokens.ndim == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.ndim != 1:
        raise ValueError(f"expected one prompt, tokens of shape [pos], got {tuple(tokens.shape)}")
    _check_vocab(model, tokens)
    n_pos = len(tokens)
    positions = tuple(int(p) % n_pos if -n_pos <= int(p) < n_pos else n_pos for p in positions)
    if not positions or max(positions) >= n_pos or len(set(positions)) != len(positions):
        raise ValueError(f"positions must be distinct and inside the prompt of length {n_pos}")
    if not 0 <= int(answer) < model.cfg.d_vocab_out:
        raise ValueError(f"answer {answer} is outside the vocabulary [0, {model.cfg.d_vocab_out})")
    return tokens.to(model.W_E.device), positions


def _check_vocab(model, tokens) -> None:
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= model.cfg.d_vocab):
        raise ValueError(f"tokens must lie in [0, {model.cfg.d_vocab}), got [{int(tokens.min())}, "
                         f"{int(tokens.max())}]")
