"""What an Othello model knows: how often its top move is legal (by move number), and linear probes of the board
(Li et al. 2023; Nanda 2023) with the labels from the engine, beside their baselines.

Board labels come in three kinds (:func:`mi_toolkit.tasks.othello.board_labels`): ``"mine"`` (empty / the player
to move / the opponent), ``"colour"`` (empty / black / white) and ``"flipped"`` (whether the last move turned the
disc). Token position ``t`` has read moves ``0 .. t``, so its label is the board after move ``t``.
"""

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mi_toolkit.analysis.probes import LayerProbes, ProbeConfig, probe_layers
from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.core.types import Positions
from mi_toolkit.tasks.othello import board_labels, replay
from mi_toolkit.tasks.othello_task import OthelloTask

__all__ = ["KINDS", "board_probe_table", "board_probes", "legal_rate_by_move", "move_probabilities", "probe_positions"]

KINDS = {"mine": 3, "colour": 3, "flipped": 2}
"""Board-label kinds and their number of classes."""


def probe_positions(task: OthelloTask) -> slice:
    """Nanda's probing positions scaled to the board: he probes positions 5-54 of the 8x8 model's 59, leaving out
    the first five moves and the last four; here positions ``5 .. n_ctx - 5`` (5-26 of 31 on 6x6)."""
    return slice(min(5, task.n_ctx - 1), max(task.n_ctx - 4, min(5, task.n_ctx - 1) + 1))


@torch.no_grad()
def legal_rate_by_move(model: HookedTransformer, task: OthelloTask, games: np.ndarray | None = None,
                       chunk: int = 500) -> Float[Tensor, " pos"]:
    """The share of games whose top-1 prediction after move ``t`` is a legal move ``t + 1``, for each ``t``.

    Args:
        model: the Othello model.
        task: its task.
        games: int ``[n, max_len]`` games; default the task's held-out games.
        chunk: games per forward pass.

    Returns:
        ``[n_ctx]`` rates, each over the games that have a move ``t + 1``.
    """
    batch = None if games is None else task.batch(games)
    return task.evaluate(model, batch=batch, chunk=chunk, by_move=True)["legal_by_move"]


@torch.no_grad()
def move_probabilities(model: HookedTransformer, task: OthelloTask, game) -> Float[Tensor, "pos size size"]:
    """The model's probability of every square as the next move after each move of one game (0 on the centre
    squares).

    Args:
        model: the Othello model.
        task: its task.
        game: the game's squares (``-1`` padding allowed).

    Returns:
        Boards ``[min(n_moves, n_ctx), size, size]``: row ``t`` is the distribution over move ``t + 1``.
    """
    tokens = task.encode(np.asarray(game)[None]).to(next(model.parameters()).device)[:, : task.n_ctx]
    return task.square_probabilities(model(tokens)[0]).cpu().view(-1, task.size, task.size)


def board_probes(
    model: HookedTransformer,
    task: OthelloTask,
    games: np.ndarray,
    kind: str = "mine",
    config: ProbeConfig | None = None,
    *,
    hook_names: list[str] | None = None,
    positions: Positions | None = None,
    held_out: float = 0.2,
    control: bool = True,
    random_model: bool = True,
    progress: bool = False,
) -> LayerProbes:
    """Probes of the board after each move, one output per square, at every layer's residual stream (default).

    Args:
        model: the Othello model.
        task: its task.
        games: int ``[n, max_len]`` games (e.g. ``random_games(3000, seed=...)``, apart from the training games).
        kind: ``"mine"``, ``"colour"`` or ``"flipped"`` (see the module docstring).
        config: the probes' solver (default ridge).
        hook_names: the hook points (default: the embedding and every layer's ``resid_post``).
        positions: token positions to probe (default all; :func:`probe_positions` gives Nanda's).
        held_out: share of games held out for the accuracies.
        control, random_model: compute those baselines.
        progress: show a progress bar.

    Returns:
        :func:`~mi_toolkit.analysis.probes.probe_layers`'s :class:`~mi_toolkit.analysis.probes.LayerProbes`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    games = np.asarray(games)
    labels = board_labels(replay(games, task.size), kind)[:, : task.n_ctx]
    tokens = task.encode(games)[:, : task.n_ctx].to(next(model.parameters()).device)
    return probe_layers(model, tokens, torch.as_tensor(labels), KINDS[kind], config, hook_names=hook_names,
                        positions=positions, held_out=held_out, control=control, random_model=random_model,
                        progress=progress)


def board_probe_table(probes: LayerProbes) -> list[dict]:
    """:meth:`~mi_toolkit.analysis.probes.LayerProbes.table` of board probes, each row with ``test_occupied`` (the
    held-out accuracy on occupied squares: classes 1 and 2; its 95% interval ``test_occupied_low`` /
    ``test_occupied_high``, resampling held-out games) and ``test_per_square``."""
    rows = probes.table()
    for row in rows:
        accuracy = probes.test[row["hook_name"]]
        occupied = accuracy.among([1, 2])
        row["test_occupied"] = occupied.overall
        row["test_occupied_low"], row["test_occupied_high"] = occupied.interval()
        row["test_per_square"] = [round(x, 4) for x in accuracy.per_output.tolist()]
    return rows
