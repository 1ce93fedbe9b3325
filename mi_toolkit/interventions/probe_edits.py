"""Editing a model's internal world along linear-probe directions, and scoring the edit against the Othello engine.

:func:`probe_flip` is a hook factory (Nanda 2023's recipe: add a multiple of the probe direction to the residual
stream at chosen layers). For each batch row it adds the multiple of the probe's class-difference vector ``w``
(e.g. theirs minus mine for one square) that sets the probe's score difference ``x . w + b`` to ``margin``: the
probe then reads the new class with that confidence, whatever it read before. Given ``control`` directions, a
change of the same norm goes along them instead: the equal-norm random control.

:func:`evaluate_flips` checks that the model acts on the edited board (Li et al. 2023): flip one occupied square's
owner in the middle of a game, compute the edited board's legal moves with the engine, and count the model's errors
against them (false positives + false negatives of the set of squares with probability above ``threshold``), with
no edit, with the probe edit and with the random control.
"""

import dataclasses

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_toolkit.analysis.probes import Probe
from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.core.types import HookFn
from mi_toolkit.tasks.othello import board_labels, legal_from_boards, replay
from mi_toolkit.tasks.othello_task import OthelloTask

__all__ = ["FlipCases", "FlipErrors", "evaluate_flips", "flip_cases", "probe_flip"]

MINE, THEIRS = 1, 2
"""Classes of the "mine" board labels (0 is empty)."""


def probe_flip(
    w: Float[Tensor, "batch d_model"],
    b: Float[Tensor, " batch"],
    positions: Int[Tensor, " batch"],
    margin: float = 2.0,
    *,
    control: Float[Tensor, "batch d_model"] | None = None,
) -> HookFn:
    """A hook that moves each row's residual stream at its position along ``w`` until ``x . w + b == margin``.

    Args:
        w: per row, the probe's weight difference "new class minus old class" for the square edited (from
            ``Probe.W[:, square, new] - Probe.W[:, square, old]``).
        b: per row, the matching bias difference.
        positions: the position edited in each row.
        margin: the probe's score difference after the edit (positive: the new class wins).
        control: unit directions to apply a change of the same norm along instead (a random control).

    Returns:
        A forward hook for a residual-stream hook point (``[batch, pos, d_model]``).
    """
    if w.ndim != 2 or b.shape != w.shape[:1] or positions.shape != w.shape[:1]:
        raise ValueError(f"w must be [batch, d_model], b and positions [batch]; got {tuple(w.shape)}, "
                         f"{tuple(b.shape)}, {tuple(positions.shape)}")
    if control is not None and control.shape != w.shape:
        raise ValueError(f"control must have w's shape {tuple(w.shape)}")
    if not margin > 0:
        raise ValueError(f"margin must be > 0 (the new class must win), got {margin}")
    w, b = w.detach(), b.detach()

    def hook(resid: Float[Tensor, "batch pos d_model"], hook) -> Tensor:
        if resid.shape[0] != len(w) or resid.shape[-1] != w.shape[-1]:
            raise ValueError(f"{getattr(hook, 'name', 'hook')}: activation {tuple(resid.shape)} does not match "
                             f"{len(w)} rows of size {w.shape[-1]}")
        rows = torch.arange(len(w), device=resid.device)
        pos = positions.to(resid.device)
        x = resid[rows, pos]
        wx, bx = w.to(x), b.to(x)
        delta = ((margin - (x * wx).sum(-1) - bx) / (wx * wx).sum(-1))[:, None] * wx
        if control is not None:
            delta = delta.norm(dim=-1, keepdim=True) * control.to(x)
        out = resid.clone()
        out[rows, pos] = x + delta
        return out

    return hook


@dataclasses.dataclass(frozen=True)
class FlipCases:
    """Positions in games where one square's owner is flipped: game ``games[i]`` (its moves) after move
    ``moves[i]``, square ``squares[i]`` (``mine`` says whether it belonged to the player to move), and the legal moves of the board before
    (``legal``) and after (``legal_edited``) the flip, as bool ``[n, size*size]``."""

    games: np.ndarray
    moves: np.ndarray
    squares: np.ndarray
    mine: np.ndarray
    legal: np.ndarray
    legal_edited: np.ndarray


def flip_cases(games: np.ndarray, size: int, n: int, *, seed: int = 0, first_move: int = 5,
               last_move: int | None = None, changes_legal: bool = True) -> FlipCases:
    """Draw ``n`` flip cases: a game, a move (from ``first_move`` to ``last_move``, default the game's last but one,
    so that a next move exists; e.g. the probes' positions) and an occupied square, uniformly; with
    ``changes_legal``, only cases where the flip changes the legal moves (Li et al.'s interesting ones). Boards and
    legal moves come from the engine. Flips after which the player to move has no legal move are left out (the
    rules would pass the turn, and "mine" would change sides).

    Args:
        games: int ``[n_games, max_len]`` games.
        size: the board side.
        n: cases to draw.
        seed: seeds the draw.
        first_move, last_move: the range of moves (0-based, inclusive) after which a square is flipped.
        changes_legal: keep only flips that change the legal moves.

    Returns:
        :class:`FlipCases`.

    Raises:
        ValueError: bad ``n`` or move range, no games, or too few cases found in ``games``.
    """
    games = np.asarray(games)
    if games.ndim != 2 or not len(games) or not np.issubdtype(games.dtype, np.integer):
        raise ValueError(f"games must be a non-empty int array [n_games, n_moves], got {games.dtype} {games.shape}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if first_move < 0 or (last_move is not None and last_move < first_move) or first_move >= games.shape[1] - 1:
        raise ValueError(f"need 0 <= first_move <= last_move < {games.shape[1] - 1}; got first_move={first_move}, "
                         f"last_move={last_move}")
    record = replay(games, size)
    labels = board_labels(record, "mine")
    length = (games >= 0).sum(1)
    rng = np.random.default_rng(seed)
    picked: list[tuple[int, int, int]] = []
    legal_rows, edited_rows = [], []
    for _ in range(200):  # rounds of candidates; a round keeps about a third
        g = rng.integers(0, len(games), 4 * n)
        end = length[g] - 1 if last_move is None else np.minimum(length[g] - 1, last_move + 1)
        t = rng.integers(first_move, np.maximum(end, first_move + 1))
        ok = t < end
        g, t = g[ok], t[ok]
        occupied = labels[g, t] > 0
        sq = np.array([rng.choice(np.flatnonzero(row)) for row in occupied])
        boards = record.boards[g, t].copy()
        flat = boards.reshape(len(g), -1)
        flat[np.arange(len(g)), sq] = 3 - flat[np.arange(len(g)), sq]  # black <-> white
        edited = legal_from_boards(boards, record.player[g, t], size)
        keep = edited.any(-1)  # the player to move can still move on the edited board
        if changes_legal:
            keep &= (edited != record.legal[g, t]).any(-1)
        for i in np.flatnonzero(keep)[: n - len(picked)]:
            picked.append((int(g[i]), int(t[i]), int(sq[i])))
            legal_rows.append(record.legal[g[i], t[i]])
            edited_rows.append(edited[i])
        if len(picked) == n:
            break
    if len(picked) < n:
        raise ValueError(f"found only {len(picked)} flip cases of the {n} asked for in these games")
    g, t, sq = (np.array(c, dtype=np.int64) for c in zip(*picked))
    return FlipCases(games[g], t, sq, labels[g, t, sq] == MINE, np.stack(legal_rows), np.stack(edited_rows))


@dataclasses.dataclass(frozen=True)
class FlipErrors:
    """Mean errors (false positives + false negatives per case) against the edited board's legal moves: with no
    edit, with the probe edit, with the equal-norm random edit; and with no edit against the unedited board (the
    model's own error). ``per_case`` holds ``[n, 3]`` errors (none, probe, random)."""

    none: float
    probe: float
    random: float
    unedited: float
    per_case: Float[Tensor, "n 3"]
    threshold: float
    margin: float
    hook_names: tuple[str, ...]

    @property
    def reduction(self) -> float:
        """How many times fewer errors the probe edit leaves than no edit."""
        return self.none / max(self.probe, 1e-9)


def _errors(probs: Tensor, legal: Tensor, threshold: float) -> Tensor:
    return ((probs > threshold) != legal).sum(-1).float()


@torch.no_grad()
def evaluate_flips(
    model: HookedTransformer,
    task: OthelloTask,
    probes: dict[str, Probe],
    cases: FlipCases,
    *,
    margin: float = 2.0,
    threshold: float = 0.05,
    seed: int = 0,
) -> FlipErrors:
    """Li et al.'s intervention score: does the model predict the legal moves of the edited board?

    Args:
        model: the Othello model.
        task: its task (encoding).
        probes: "mine / theirs / empty" probes (classes 0, 1, 2; one output per square) by residual-stream hook
            name; each edits its own hook point.
        cases: from :func:`flip_cases`.
        margin: :func:`probe_flip`'s score difference after the edit.
        threshold: a square is predicted legal when its probability exceeds this.
        seed: seeds the random control directions.

    Returns:
        :class:`FlipErrors`.
    """
    if not probes:
        raise ValueError("give at least one probe")
    device = next(model.parameters()).device
    tokens = task.encode(cases.games).to(device)[:, : task.n_ctx]
    positions = torch.as_tensor(cases.moves, device=device)
    squares = torch.as_tensor(cases.squares)
    # mine -> theirs for a square that was mine, theirs -> mine otherwise
    sign = torch.where(torch.as_tensor(cases.mine), 1.0, -1.0)
    gen = torch.Generator().manual_seed(seed)
    hooks = {"probe": [], "random": []}
    for name, probe in probes.items():
        if probe.n_outputs != task.size ** 2 or probe.n_classes != 3:
            raise ValueError(f"the probe at {name} is not a {task.size ** 2}-square, 3-class board probe")
        W, b = probe.W.detach().cpu(), probe.b.detach().cpu()
        w = sign[:, None] * (W[:, :, THEIRS] - W[:, :, MINE]).T[squares]
        bias = sign * (b[:, THEIRS] - b[:, MINE])[squares]
        r = torch.nn.functional.normalize(torch.randn(w.shape, generator=gen), dim=-1)
        hooks["probe"].append((name, probe_flip(w.to(device), bias.to(device), positions, margin)))
        hooks["random"].append((name, probe_flip(w.to(device), bias.to(device), positions, margin,
                                                 control=r.to(device))))
    rows = torch.arange(len(positions), device=device)

    def probs(fwd_hooks) -> Tensor:
        with model.hooks(fwd_hooks=fwd_hooks):
            return task.square_probabilities(model(tokens)[rows, positions]).cpu()

    legal, edited = torch.as_tensor(cases.legal), torch.as_tensor(cases.legal_edited)
    plain = probs([])
    per_case = torch.stack([_errors(plain, edited, threshold), _errors(probs(hooks["probe"]), edited, threshold),
                            _errors(probs(hooks["random"]), edited, threshold)], dim=1)
    none, probe, random = per_case.mean(0).tolist()
    return FlipErrors(none, probe, random, _errors(plain, legal, threshold).mean().item(), per_case, threshold,
                      margin, tuple(probes))
