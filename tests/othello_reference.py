"""A slow, plainly written Othello engine: the reference that ``mi_toolkit.tasks.othello`` is tested against.

Written from the rules, not from the bitboard engine: the board is a list of rows, and a move is checked by walking
from the square in each of the eight directions, one square at a time. It is used by ``tests/test_othello.py``
(agreement on every recorded field) and by ``benchmarks/othello.py`` (the games/s of a plain engine).

Rules: an even board of side ``size``; squares are numbered row-major, ``square = row * size + col``. The four
centre squares start occupied, white on the main diagonal (``(lo, lo)`` and ``(hi, hi)`` with ``lo = size//2 - 1``,
``hi = lo + 1``) and black on the other two. Black moves first. A move puts a disc on an empty square such that, in
at least one direction, the neighbours are one or more of the opponent's discs followed by one of the mover's own;
every such bracketed run of opponent discs is turned over. A player with no legal move passes (the opponent moves
again; nothing is recorded for the pass). The game is over when neither player has a legal move.
"""

import random

EMPTY, BLACK, WHITE = 0, 1, 2
DIRECTIONS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def opponent(colour: int) -> int:
    return WHITE if colour == BLACK else BLACK


class IllegalMove(Exception):
    """A move that the reference engine refuses."""


class Othello:
    """One game: ``board[row][col]`` holds EMPTY, BLACK or WHITE; ``to_move`` is the colour to move (0 when over)."""

    def __init__(self, size: int = 6):
        if size % 2 or size < 4:
            raise ValueError(f"size must be even and at least 4, got {size}")
        self.size = size
        self.board = [[EMPTY] * size for _ in range(size)]
        lo, hi = size // 2 - 1, size // 2
        self.board[lo][lo] = WHITE
        self.board[hi][hi] = WHITE
        self.board[lo][hi] = BLACK
        self.board[hi][lo] = BLACK
        self.to_move = BLACK
        self.passes = 0  # how many times a player had to pass so far
        self.moves = self.legal_moves(BLACK)  # the legal moves of the player to move, kept up to date by play()
        if not self.moves:  # cannot happen on a fresh board, but be plain about it
            self.to_move = 0

    def captures(self, square: int, colour: int) -> list[int]:
        """The squares that ``colour`` would turn over by playing on ``square`` (empty list: not a legal move)."""
        size, board = self.size, self.board
        row, col = divmod(square, size)
        if board[row][col] != EMPTY:
            return []
        other = opponent(colour)
        turned = []
        for dr, dc in DIRECTIONS:
            run = []
            r, c = row + dr, col + dc
            while 0 <= r < size and 0 <= c < size and board[r][c] == other:
                run.append(r * size + c)
                r, c = r + dr, c + dc
            if run and 0 <= r < size and 0 <= c < size and board[r][c] == colour:
                turned.extend(run)
        return turned

    def is_legal(self, square: int, colour: int) -> bool:
        """Whether ``colour`` may play on ``square``: the same walk as :meth:`captures`, stopping at the first run."""
        size, board = self.size, self.board
        row, col = divmod(square, size)
        if board[row][col] != EMPTY:
            return False
        other = opponent(colour)
        for dr, dc in DIRECTIONS:
            r, c = row + dr, col + dc
            seen = 0
            while 0 <= r < size and 0 <= c < size and board[r][c] == other:
                seen += 1
                r, c = r + dr, c + dc
            if seen and 0 <= r < size and 0 <= c < size and board[r][c] == colour:
                return True
        return False

    def legal_moves(self, colour: int | None = None) -> list[int]:
        """The squares (ascending) where ``colour`` (default: the player to move) may play."""
        colour = self.to_move if colour is None else colour
        if colour == 0:
            return []
        size, board = self.size, self.board
        return [row * size + col for row in range(size) for col in range(size)
                if board[row][col] == EMPTY and self.is_legal(row * size + col, colour)]

    @property
    def over(self) -> bool:
        return self.to_move == 0

    def play(self, square: int) -> list[int]:
        """Plays ``square`` for the player to move; returns the squares it turned over (sorted)."""
        if self.over:
            raise IllegalMove(f"square {square}: the game is over")
        if not (0 <= square < self.size * self.size):
            raise IllegalMove(f"square {square} is not on the board")
        colour = self.to_move
        turned = self.captures(square, colour)
        if not turned:
            raise IllegalMove(f"square {square} is not legal for {colour}")
        row, col = divmod(square, self.size)
        self.board[row][col] = colour
        for s in turned:
            r, c = divmod(s, self.size)
            self.board[r][c] = colour
        other = opponent(colour)
        their_moves = self.legal_moves(other)
        if their_moves:
            self.to_move, self.moves = other, their_moves
        else:
            my_moves = self.legal_moves(colour)
            if my_moves:
                self.to_move, self.moves = colour, my_moves  # the opponent passes
                self.passes += 1
            else:
                self.to_move, self.moves = 0, []  # neither can move: the game is over
        return sorted(turned)

    def copy_board(self) -> list[list[int]]:
        return [row[:] for row in self.board]


def replay_reference(game, size: int = 6) -> list[dict]:
    """Plays ``game`` (a list of squares; a ``-1`` ends it, later entries must be ``-1`` too).

    Returns one record per entry of ``game``: ``board`` (list of rows), ``legal`` (set of squares for the player to
    move next), ``player`` (the colour to move next, 0 when over), ``flipped`` (set of squares turned), ``mover``
    (the colour that played). After the end (``-1``), ``board`` is all ``-1``, the sets empty, player and mover 0.
    Raises IllegalMove for an illegal move (or one after a ``-1``).
    """
    othello = Othello(size)
    records = []
    ended = False
    for t, square in enumerate(game):
        square = int(square)
        if square == -1:
            ended = True
        if ended:
            if square != -1:
                raise IllegalMove(f"move {t}: square {square} after the end")
            records.append({"board": [[-1] * size for _ in range(size)], "legal": set(), "player": 0,
                            "flipped": set(), "mover": 0})
            continue
        mover = othello.to_move
        try:
            turned = othello.play(square)
        except IllegalMove as e:
            raise IllegalMove(f"move {t}: {e}") from None
        records.append({"board": othello.copy_board(), "legal": set(othello.moves),
                        "player": othello.to_move, "flipped": set(turned), "mover": mover})
    return records


def random_game(size: int = 6, rng: random.Random | None = None) -> list[int]:
    """One game, each move drawn uniformly from the legal ones with ``rng``; padded with -1 to ``size*size - 4``."""
    rng = rng or random.Random()
    othello = Othello(size)
    moves = []
    while not othello.over:
        square = rng.choice(othello.moves)
        othello.play(square)
        moves.append(square)
    return moves + [-1] * (size * size - 4 - len(moves))


def random_games_reference(n: int, size: int = 6, seed: int = 0) -> list[list[int]]:
    """``n`` random games from ``random.Random(seed)``."""
    rng = random.Random(seed)
    return [random_game(size, rng) for _ in range(n)]
