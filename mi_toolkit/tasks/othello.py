"""Othello on any even board, vectorised over games with numpy bitboards (``mt.othello``'s engine).

Squares are numbered row-major ``0 .. size*size - 1``; a board is two ``uint64`` bitboards (black's and white's
discs, bit ``i`` for square ``i``), so every rule is a few shifts and masks applied to all games at once. Black
moves first; a player with no legal move passes implicitly (the other player moves again, and no pass is recorded,
as in Li et al. 2023); the game ends when neither player can move. Games are arrays ``[n, max_len]`` of squares,
padded with ``-1``; ``max_len = size*size - 4`` (every move fills one empty square).

:func:`random_games` draws games whose every move is uniform over the legal ones. :func:`replay` plays given games
and returns, after each move, the board, the legal moves and the player to move, and the discs the move flipped;
an illegal move raises :class:`IllegalMoveError` naming the game and the move number. :func:`board_states`,
:func:`legal_moves`, :func:`players_to_move` and :func:`flipped` are its views; :func:`board_labels` turns boards
into probe labels (empty / black / white, or empty / mine / theirs for the player to move).

>>> games = random_games(3, size=6, seed=0)
>>> games.shape, bool(legal_moves(games, 6)[:, 0].any(-1).all())
((3, 32), True)
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

__all__ = ["BLACK", "EMPTY", "WHITE", "IllegalMoveError", "Replay", "board_labels", "board_states", "flipped",
           "legal_from_boards", "legal_moves", "players_to_move", "random_games", "random_games_and_legal", "replay", "start_position"]

EMPTY, BLACK, WHITE = 0, 1, 2
"""Square contents in :func:`board_states` (``-1`` after a game's end)."""

_DIRECTIONS = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]


class IllegalMoveError(ValueError):
    """A move that is not legal in its position (or a square off the board), with the game and move number."""


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """Bit masks for one board size: every square, and the squares a shift in each direction may start from."""

    size: int
    full: np.uint64
    sources: tuple[np.uint64, ...]  # per direction: squares whose neighbour in that direction is on the board
    shifts: tuple[int, ...]  # per direction: the bit offset of that neighbour

    @classmethod
    def of(cls, size: int) -> "_Geometry":
        _check_size(size)
        squares = np.arange(size * size)
        rows, cols = squares // size, squares % size
        sources, shifts = [], []
        for dr, dc in _DIRECTIONS:
            ok = (rows + dr >= 0) & (rows + dr < size) & (cols + dc >= 0) & (cols + dc < size)
            sources.append(_bits(squares[ok]))
            shifts.append(dr * size + dc)
        return cls(size, _bits(squares), tuple(sources), tuple(shifts))

    def shift(self, board: np.ndarray, direction: int) -> np.ndarray:
        """Every disc of ``board`` moved one square in ``direction`` (discs that would leave the board vanish)."""
        moved = board & self.sources[direction]
        k = self.shifts[direction]
        return (moved << np.uint64(k)) if k > 0 else (moved >> np.uint64(-k))

    def legal(self, own: np.ndarray, other: np.ndarray) -> np.ndarray:
        """Bitboard of the legal moves for the player owning ``own``: empty squares that bracket a run of ``other``."""
        empty = ~(own | other) & self.full
        legal = np.zeros_like(own)
        for d in range(8):
            run = self.shift(own, d) & other
            for _ in range(self.size - 3):  # a run of the opponent's discs is at most size - 2 long
                run |= self.shift(run, d) & other
            legal |= self.shift(run, d) & empty
        return legal

    def flips(self, move: np.ndarray, own: np.ndarray, other: np.ndarray) -> np.ndarray:
        """Bitboard of the discs that playing ``move`` (one bit per game, or 0) turns from ``other`` to ``own``."""
        flips = np.zeros_like(own)
        for d in range(8):
            run = self.shift(move, d) & other
            for _ in range(self.size - 3):
                run |= self.shift(run, d) & other
            closed = (self.shift(run, d) & own) != 0
            flips |= np.where(closed, run, np.uint64(0))
        return flips


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < 4 or size > 8 or size % 2:
        raise ValueError(f"board size must be an even integer from 4 to 8 (64 squares fit a bitboard), got {size!r}")


def _bits(squares) -> np.uint64:
    return np.uint64(sum(1 << int(s) for s in squares))


def _unpack(boards: np.ndarray, n_squares: int) -> np.ndarray:
    """``[...]`` bitboards -> ``[..., n_squares]`` bools."""
    return ((boards[..., None] >> np.arange(n_squares, dtype=np.uint64)) & np.uint64(1)).astype(bool)


def start_position(size: int = 6) -> tuple[int, int]:
    """Black's and White's bitboards at the start: the four centre squares, white on the main diagonal."""
    _check_size(size)
    lo, hi = size // 2 - 1, size // 2
    white = _bits([lo * size + lo, hi * size + hi])
    black = _bits([lo * size + hi, hi * size + lo])
    return int(black), int(white)


class _Games:
    """``n`` games in progress: bitboards, the player to move (0 black, 1 white) and whether each has ended."""

    def __init__(self, n: int, geometry: _Geometry):
        self.geometry = geometry
        black, white = start_position(geometry.size)
        self.discs = np.empty((2, n), dtype=np.uint64)
        self.discs[0], self.discs[1] = black, white
        self.player = np.zeros(n, dtype=np.int64)
        self.legal = geometry.legal(self.discs[0], self.discs[1])
        self.over = self.legal == 0

    def play(self, move_bits: np.ndarray) -> np.ndarray:
        """Plays one move per unfinished game (``move_bits`` legal; ignored where the game is over); returns flips."""
        live = ~self.over
        idx = np.arange(len(self.player))
        own, other = self.discs[self.player, idx], self.discs[1 - self.player, idx]
        move_bits = np.where(live, move_bits, np.uint64(0))
        flips = self.geometry.flips(move_bits, own, other)
        own, other = own | move_bits | flips, other & ~flips
        # the opponent moves next unless it has no legal move and the mover has one (an implicit pass)
        their_moves = self.geometry.legal(other, own)
        my_moves = np.zeros_like(own)
        stuck = their_moves == 0
        if stuck.any():
            my_moves[stuck] = self.geometry.legal(own[stuck], other[stuck])
        passes = (their_moves == 0) & (my_moves != 0)
        new_player = np.where(passes, self.player, 1 - self.player)
        self.discs[self.player, idx] = np.where(live, own, self.discs[self.player, idx])
        self.discs[1 - self.player, idx] = np.where(live, other, self.discs[1 - self.player, idx])
        self.legal = np.where(live, np.where(passes, my_moves, their_moves), np.uint64(0))
        self.player = np.where(live, new_player, self.player)
        self.over |= self.legal == 0
        return flips


def random_games(n: int, size: int = 6, seed: int | Sequence[int] | np.random.Generator = 0, *,
                 chunk: int = 65536) -> np.ndarray:
    """``n`` random games, each move drawn uniformly from the legal ones.

    Args:
        n: number of games.
        size: board side (even, 4 to 8).
        seed: an int (``np.random.default_rng(seed)``: any int or sequence of ints) or a generator.
        chunk: games simulated at once (memory only; the games do not depend on it).

    Returns:
        int64 ``[n, size*size - 4]``: the squares played, ``-1`` after the game's end.
    """
    return _simulate(n, size, seed, chunk)[0]


def random_games_and_legal(n: int, size: int = 6, seed: int | Sequence[int] | np.random.Generator = 0, *,
                           chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """:func:`random_games` (the same games for the same seed) and their legal moves after each move (as
    :func:`legal_moves` gives them), from the one simulation: ``(games [n, max_len], legal bool [n, max_len,
    size*size])``. The training data of :class:`~mi_toolkit.tasks.othello_task.OthelloTask`, without a replay."""
    games, legal_bits = _simulate(n, size, seed, chunk, keep_legal=True)
    return games, _unpack(legal_bits, size * size)


def _simulate(n: int, size: int, seed, chunk: int, keep_legal: bool = False):
    geometry = _Geometry.of(size)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n_squares, max_len = size * size, size * size - 4
    out = np.full((n, max_len), -1, dtype=np.int64)
    legal_after = np.zeros((n, max_len), dtype=np.uint64) if keep_legal else None
    for start in range(0, n, chunk):
        # rows of uniform draws, one per (game, move): consecutive draws, so the games do not depend on ``chunk``
        draws = rng.random((min(chunk, n - start), max_len))
        games = _Games(len(draws), geometry)
        rows = slice(start, start + len(draws))
        for t in range(max_len):
            live = ~games.over
            if not live.any():
                break
            legal = _unpack(games.legal, n_squares)
            counts = legal.sum(-1)
            pick = np.minimum((draws[:, t] * counts).astype(np.int64), counts - 1)
            square = (np.cumsum(legal, -1, dtype=np.int8) > pick[:, None]).argmax(-1)
            out[rows, t] = np.where(live, square, -1)
            games.play(np.where(live, np.uint64(1) << square.astype(np.uint64), np.uint64(0)))
            if keep_legal:
                legal_after[rows, t] = np.where(live, games.legal, np.uint64(0))
    return out, legal_after


@dataclasses.dataclass(frozen=True)
class Replay:
    """Games played through the engine: for each game ``g`` and move ``t``, the position after that move.

    ``boards[g, t]`` int8 ``[size, size]`` (``EMPTY``/``BLACK``/``WHITE``; ``-1`` after the end), ``legal[g, t]`` bool
    ``[size*size]`` (the legal squares for the player to move; none after the end), ``player[g, t]`` (``BLACK`` or
    ``WHITE`` to move next; 0 once the game is over), ``flipped[g, t]`` bool ``[size*size]`` (the discs move ``t``
    turned). ``mover[g, t]`` is the colour that played move ``t`` (0 on padding).
    """

    size: int
    boards: np.ndarray
    legal: np.ndarray
    player: np.ndarray
    flipped: np.ndarray
    mover: np.ndarray


def _as_games(games, size: int) -> np.ndarray:
    games = np.asarray(games)
    if games.ndim == 1:
        games = games[None]
    if games.ndim != 2 or not np.issubdtype(games.dtype, np.integer):
        raise ValueError(f"games must be an int array [n_games, n_moves] of squares, got {games.dtype} {games.shape}")
    if games.shape[1] > size * size - 4:
        raise ValueError(f"a {size}x{size} game has at most {size * size - 4} moves, got {games.shape[1]} columns")
    return games.astype(np.int64)


def replay(games, size: int = 6) -> Replay:
    """Plays ``games`` (``[n, n_moves]`` squares, ``-1`` padding at the end) and records every position.

    Raises:
        IllegalMoveError: a square off the board, a move after ``-1`` padding or after the game's end, or a move that
            is not legal; the message names the first such game and move number (0-based).
    """
    geometry = _Geometry.of(size)
    games = _as_games(games, size)
    n, n_moves = games.shape
    n_squares = size * size
    state = _Games(n, geometry)
    boards = np.full((n, n_moves, size, size), -1, dtype=np.int8)
    legal = np.zeros((n, n_moves, n_squares), dtype=bool)
    player = np.zeros((n, n_moves), dtype=np.int8)
    mover = np.zeros((n, n_moves), dtype=np.int8)
    flips = np.zeros((n, n_moves, n_squares), dtype=bool)
    ended = np.zeros(n, dtype=bool)  # padding seen
    for t in range(n_moves):
        square = games[:, t]
        padding = square == -1
        bad_square = (square < -1) | (square >= n_squares)
        safe = np.clip(square, 0, n_squares - 1).astype(np.uint64)
        bits = np.where(padding | bad_square, np.uint64(0), np.uint64(1) << safe)
        after_end = ~padding & (ended | state.over)
        illegal = ~padding & ~after_end & ~bad_square & ((state.legal & bits) == 0)
        bad = bad_square | after_end | illegal
        if bad.any():
            g = int(np.flatnonzero(bad)[0])
            why = ("is not a square of the board" if bad_square[g] else
                   "comes after the game's end" if after_end[g] else "is not legal in its position")
            raise IllegalMoveError(f"game {g}, move {t}: square {int(square[g])} {why}")
        ended |= padding
        live = ~padding
        mover[:, t] = np.where(live, state.player + 1, 0)
        state.over |= padding  # a padded game plays no more
        turned = state.play(bits)
        flips[:, t] = _unpack(turned, n_squares)
        disc = _unpack(state.discs, n_squares)  # [2, n, squares]
        board = np.where(disc[0], BLACK, np.where(disc[1], WHITE, EMPTY)).astype(np.int8)
        boards[:, t] = np.where(live[:, None], board, -1).reshape(n, size, size)
        legal[:, t] = _unpack(state.legal, n_squares) & live[:, None]
        player[:, t] = np.where(live & ~state.over, state.player + 1, 0)
    return Replay(size, boards, legal, player, flips, mover)


def board_states(games, size: int = 6) -> np.ndarray:
    """int8 ``[n, n_moves, size, size]``: the board after each move (0 empty, 1 black, 2 white; -1 after the end)."""
    return replay(games, size).boards


def legal_moves(games, size: int = 6) -> np.ndarray:
    """bool ``[n, n_moves, size*size]``: the legal squares for the player to move after each move."""
    return replay(games, size).legal


def players_to_move(games, size: int = 6) -> np.ndarray:
    """int8 ``[n, n_moves]``: who moves after each move (1 black, 2 white; 0 once the game is over)."""
    return replay(games, size).player


def flipped(games, size: int = 6) -> np.ndarray:
    """bool ``[n, n_moves, size*size]``: the discs each move turned over."""
    return replay(games, size).flipped


def board_labels(record: Replay, kind: str = "mine") -> np.ndarray:
    """Probe labels ``[n, n_moves, size*size]`` per square after each move, ``-1`` after the end.

    Args:
        record: a :func:`replay`.
        kind: ``"colour"``: 0 empty, 1 black, 2 white. ``"mine"``: 0 empty, 1 mine, 2 theirs, relative to the
            player to move next (Nanda 2023; where neither can move, relative to the opponent of the last mover).
            ``"flipped"``: 1 where the last move turned the disc over, else 0.
    """
    n, n_moves = record.boards.shape[:2]
    boards = record.boards.reshape(n, n_moves, -1).astype(np.int64)
    padding = boards[..., :1] < 0
    if kind == "colour":
        return boards
    if kind == "flipped":
        return np.where(padding, -1, record.flipped.astype(np.int64))
    if kind == "mine":
        # the player to move next; at the end (player 0), the opponent of whoever moved last
        to_move = np.where(record.player > 0, record.player, 3 - record.mover).astype(np.int64)[..., None]
        mine = np.where(boards == EMPTY, 0, np.where(boards == to_move, 1, 2))
        return np.where(padding, -1, mine)
    raise ValueError(f"kind must be 'colour', 'mine' or 'flipped', got {kind!r}")


def legal_from_boards(boards, player, size: int | None = None) -> np.ndarray:
    """The legal squares of arbitrary positions (e.g. a board with one disc flipped by hand).

    Args:
        boards: int ``[n, size, size]`` (``EMPTY``/``BLACK``/``WHITE``), or one board ``[size, size]``.
        player: ``BLACK`` or ``WHITE`` to move, per board (or one for all).

    Returns:
        bool ``[n, size*size]`` (``[size*size]`` for one board).
    """
    boards = np.asarray(boards)
    if boards.ndim not in (2, 3):
        raise ValueError(f"boards must be [size, size] or [n, size, size], got shape {boards.shape}")
    single = boards.ndim == 2
    boards = boards[None] if single else boards
    size = boards.shape[-1] if size is None else size
    geometry = _Geometry.of(size)
    if boards.ndim != 3 or boards.shape[1:] != (size, size) or not np.isin(boards, (EMPTY, BLACK, WHITE)).all():
        raise ValueError(f"boards must be [n, {size}, {size}] of 0 (empty), 1 (black), 2 (white); got "
                         f"{boards.dtype} {boards.shape}")
    player = np.broadcast_to(np.asarray(player), boards.shape[:1])
    if not np.isin(player, (BLACK, WHITE)).all():
        raise ValueError("player must be BLACK (1) or WHITE (2)")
    flat = boards.reshape(len(boards), -1)
    weights = np.uint64(1) << np.arange(size * size, dtype=np.uint64)
    black = (np.where(flat == BLACK, weights, np.uint64(0))).sum(-1, dtype=np.uint64)
    white = (np.where(flat == WHITE, weights, np.uint64(0))).sum(-1, dtype=np.uint64)
    own, other = np.where(player == BLACK, black, white), np.where(player == BLACK, white, black)
    legal = _unpack(geometry.legal(own, other), size * size)
    return legal[0] if single else legal
