"""Predicting legal Othello moves from the moves so far (Li et al. 2023's synthetic task), for any even board.

A game is a sequence of squares; a token is a playable square (every square but the four centre ones, in row-major
order), and ``PAD`` follows the game's end. There is no BOS: ``logits[:, t]`` predicts move ``t + 1`` from moves
``0 .. t``, so a model reads at most ``size*size - 5`` tokens. Games are random (each move uniform over the legal
ones), so the next move is a uniform draw from the legal set and the best a model can do is spread its probability
over exactly the legal moves.

The training loss is the next-move cross-entropy (``target="next"``, Li et al.) or its expectation over that
uniform draw, the cross-entropy against the uniform distribution on the legal moves (``target="legal"``, the
default): the same objective with less noise per game.
"""

import dataclasses
import functools

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.tasks.othello import random_games, random_games_and_legal, replay

__all__ = ["OthelloTask"]


@dataclasses.dataclass(frozen=True)
class OthelloTask:
    """Random Othello games on a ``size`` x ``size`` board; the model predicts the legal next moves.

    It follows the task protocol of :func:`mi_toolkit.training.train`: ``n_games`` training games in blocks of
    ``batch_size`` (block ``b`` is ``random_games(batch_size, size, seed=(seed, 0, b))``; step ``s`` trains on block
    ``s mod (n_games / batch_size)``, so the data are a pure function of the step), and ``eval_games`` held-out games
    (``seed=(seed, 1)``).

    Args:
        size: board side (even, 4 to 8).
        n_games: training games (rounded up to whole batches).
        seed: seeds the training and held-out games.
        batch_size: games per training step.
        eval_games: held-out games of :meth:`evaluate`.
        target: ``"legal"`` (cross-entropy against the uniform distribution on the legal moves) or ``"next"``
            (against the move played, as Li et al.).
        device: where the tokens live.
    """

    size: int = 6
    n_games: int = 1_000_000
    seed: int = 0
    batch_size: int = 256
    eval_games: int = 2000
    target: str = "legal"
    device: str | torch.device = "cpu"

    def __post_init__(self):
        random_games(0, self.size)  # validates the size
        if self.n_games < 1 or self.batch_size < 1 or self.eval_games < 1:
            raise ValueError("n_games, batch_size and eval_games must be >= 1")
        if self.target not in ("legal", "next"):
            raise ValueError(f"target must be 'legal' or 'next', got {self.target!r}")

    # --- vocabulary ---
    @functools.cached_property
    def squares(self) -> np.ndarray:
        """The playable squares in token order (token ``i`` is square ``squares[i]``)."""
        lo, hi = self.size // 2 - 1, self.size // 2
        centre = {r * self.size + c for r in (lo, hi) for c in (lo, hi)}
        return np.array([s for s in range(self.size * self.size) if s not in centre])

    @property
    def pad(self) -> int:
        """The token after a game's end (and the model's ``d_vocab - 1``)."""
        return len(self.squares)

    @property
    def d_vocab(self) -> int:
        return self.pad + 1

    @property
    def n_ctx(self) -> int:
        """Tokens a model reads: every move but the last, which predicts nothing."""
        return len(self.squares) - 1

    @functools.cached_property
    def _token_of_square(self) -> np.ndarray:
        table = np.full(self.size * self.size + 1, -1)  # centre squares -> -1 (not a token)
        table[self.squares] = np.arange(len(self.squares))
        table[-1] = self.pad  # index -1 (padding) -> pad
        return table

    def encode(self, moves) -> Int[Tensor, "... pos"]:
        """Squares (a list, or an int array ``[..., n_moves]``; ``-1`` for padding) -> tokens.

        Raises:
            ValueError: a centre square or a square off the board.
        """
        moves = np.asarray(moves)
        if moves.size and not np.issubdtype(moves.dtype, np.integer):
            raise ValueError(f"moves must be integer squares, got dtype {moves.dtype}")
        moves = moves.astype(np.int64)
        off_board = (moves < -1) | (moves >= self.size * self.size)
        tokens = self._token_of_square[np.where(off_board, -1, moves)]
        bad = off_board | (tokens < 0)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"move {int(moves[where])} at index {where} is not a playable square of a "
                             f"{self.size}x{self.size} board")
        return torch.as_tensor(tokens, device=self.device)

    def decode(self, token_ids) -> np.ndarray:
        """Tokens -> squares; ``-1`` for a token that is not a square (``PAD``, or out of range)."""
        ids = torch.as_tensor(token_ids).cpu().numpy().astype(np.int64)
        valid = (ids >= 0) & (ids < self.pad)
        return np.where(valid, self.squares[np.clip(ids, 0, self.pad - 1)], -1)

    # --- data ---
    def batch(self, games: np.ndarray, legal: np.ndarray | None = None) -> dict[str, Tensor]:
        """The model's inputs and targets for ``games``: ``tokens [n, n_ctx]``, ``next [n, n_ctx]`` (the next move's
        token, ``-1`` where there is none), ``legal [n, n_ctx, d_vocab]`` (the legal next moves; from the engine's
        replay unless ``legal``, bool ``[n, n_moves, size*size]``, is given)."""
        games = np.asarray(games)
        tokens = self.encode(games)
        legal_squares = replay(games, self.size).legal if legal is None else legal
        legal = torch.zeros(*games.shape, self.d_vocab, dtype=torch.bool)
        legal[..., : self.pad] = torch.as_tensor(legal_squares[..., self.squares])
        nxt = tokens[:, 1:].clone()
        nxt[nxt == self.pad] = -1
        return dict(tokens=tokens[:, :-1], next=nxt, legal=legal[:, :-1].to(self.device))

    @property
    def n_blocks(self) -> int:
        return -(-self.n_games // self.batch_size)

    def train_batch(self, step: int) -> dict[str, Tensor]:
        return self.batch(*random_games_and_legal(self.batch_size, self.size, (self.seed, 0, step % self.n_blocks)))

    @functools.cached_property
    def eval_batch(self) -> dict[str, Tensor]:
        """The held-out games as a batch (cached)."""
        return self.batch(*random_games_and_legal(self.eval_games, self.size, (self.seed, 1)))

    def check_model(self, model: HookedTransformer) -> None:
        """Raise ``ValueError`` if ``model`` cannot read this task's games."""
        cfg = model.cfg
        if cfg.d_vocab < self.d_vocab or cfg.d_vocab_out < self.d_vocab or cfg.n_ctx < self.n_ctx:
            raise ValueError(f"model (d_vocab={cfg.d_vocab}, d_vocab_out={cfg.d_vocab_out}, n_ctx={cfg.n_ctx}) does "
                             f"not fit {self.size}x{self.size} Othello: needs d_vocab >= {self.d_vocab} and n_ctx >= "
                             f"{self.n_ctx}")

    # --- losses and evaluation ---
    def _loss(self, logits: Float[Tensor, "batch pos d_vocab_out"], batch: dict[str, Tensor]) -> Tensor:
        logits = logits[..., : self.d_vocab].float()
        has_next = batch["next"] >= 0
        if self.target == "next":
            return torch.nn.functional.cross_entropy(logits[has_next], batch["next"][has_next])
        legal = batch["legal"][has_next].float()
        log_probs = logits[has_next].log_softmax(-1)
        return -((legal / legal.sum(-1, keepdim=True)) * log_probs).sum(-1).mean()

    def loss(self, model: HookedTransformer, batch: dict[str, Tensor]) -> Tensor:
        return self._loss(model(batch["tokens"]), batch)

    def square_probabilities(self, logits: Float[Tensor, "... d_vocab_out"]) -> Float[Tensor, "... squares"]:
        """The next-move distribution over the playable squares, placed on the board: ``[..., size*size]``, 0 on the
        centre squares (the padding token's logit is left out)."""
        probs = logits[..., : self.pad].softmax(-1)
        full = probs.new_zeros(*probs.shape[:-1], self.size * self.size)
        full[..., torch.as_tensor(self.squares, device=probs.device)] = probs
        return full

    def legal_top1(self, logits: Float[Tensor, "batch pos d_vocab_out"], batch: dict[str, Tensor]) -> Tensor:
        """bool ``[batch, pos]``: whether the top-1 prediction is a legal move (only meaningful where a next move
        exists, ``batch["next"] >= 0``)."""
        top = logits[..., : self.d_vocab].argmax(-1, keepdim=True)
        return batch["legal"].gather(-1, top).squeeze(-1)

    @torch.no_grad()
    def evaluate(self, model: HookedTransformer, *, batch: dict[str, Tensor] | None = None, chunk: int = 500,
                 by_move: bool = False) -> dict:
        """``loss`` and ``legal_top1`` (the share of predictions, over every position with a next move, whose top-1
        square is legal) on the held-out games (or ``batch``), ``chunk`` games per forward pass; with ``by_move``
        also ``legal_by_move``, the ``[n_ctx]`` tensor of that share at each position (over the games that have a
        next move there), from the same pass."""
        batch = self.eval_batch if batch is None else batch
        device = next(model.parameters()).device
        hits = torch.zeros(self.n_ctx, dtype=torch.long)
        counts = torch.zeros(self.n_ctx, dtype=torch.long)
        loss = 0.0
        for start in range(0, len(batch["tokens"]), chunk):
            part = {k: v[start:start + chunk].to(device) for k, v in batch.items()}
            logits = model(part["tokens"])
            has_next = part["next"] >= 0
            loss += float(self._loss(logits, part)) * int(has_next.sum())
            hits += (self.legal_top1(logits, part) & has_next).sum(0).cpu()
            counts += has_next.sum(0).cpu()
        n = int(counts.sum())
        result = {"loss": loss / n, "legal_top1": int(hits.sum()) / n}
        if by_move:
            result["legal_by_move"] = hits / counts.clamp(min=1)
        return result
