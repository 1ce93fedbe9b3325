"""The vectorised Othello engine (``mi_toolkit.tasks.othello``) against a plain reference (``othello_reference.py``).

Agreement on every recorded field (board, legal moves, player to move, flips, mover) for 10,000 random 6x6 games
and a few hundred 8x8 and 4x4 ones, in both directions (the fast engine's games replayed by the reference, and the
reference's games replayed by the fast engine); the random games' distribution; seeds; passes and early ends,
checked by hand on small boards; illegal moves; probe labels.
"""

import numpy as np
import pytest
from othello_reference import (
    BLACK,
    WHITE,
    IllegalMove,
    Othello,
    opponent,
    random_games_reference,
    replay_reference,
)

from mi_toolkit.tasks import othello as ot

# chi-square critical values at p = 0.001 for 1 .. 9 degrees of freedom (the seeds are fixed: no flakiness, only a
# guard that a biased sampler would trip)
CHI2_999 = [None, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88]


def chi_square(counts) -> float:
    counts = np.asarray(counts, dtype=float)
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def reference_arrays(games: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """The reference's records of ``games``, as arrays shaped like :class:`~mi_toolkit.tasks.othello.Replay`."""
    n, n_moves = games.shape
    boards, player, mover = [], [], []
    legal = np.zeros((n, n_moves, size * size), dtype=bool)
    flips = np.zeros((n, n_moves, size * size), dtype=bool)
    for g, game in enumerate(games.tolist()):
        records = replay_reference(game, size)
        moves = [s for s in game if s >= 0]
        # every game here is a whole game: it stops exactly where the reference says it is over
        assert moves and records[len(moves) - 1]["player"] == 0, f"game {g} is padded before its end"
        boards.append([r["board"] for r in records])
        player.append([r["player"] for r in records])
        mover.append([r["mover"] for r in records])
        for t, r in enumerate(records):
            legal[g, t, list(r["legal"])] = True
            flips[g, t, list(r["flipped"])] = True
    return {"boards": np.array(boards, dtype=np.int8).reshape(n, n_moves, size, size),
            "legal": legal, "player": np.array(player, dtype=np.int8).reshape(n, n_moves),
            "flipped": flips, "mover": np.array(mover, dtype=np.int8).reshape(n, n_moves)}


def assert_agrees(games: np.ndarray, size: int, chunk: int = 2500) -> ot.Replay:
    """The fast engine's replay of ``games`` equals the reference's on every field; returns the fast replay."""
    games = np.asarray(games, dtype=np.int64)
    record = ot.replay(games, size)
    for start in range(0, len(games), chunk):
        ref = reference_arrays(games[start:start + chunk], size)
        for field, expected in ref.items():
            got = getattr(record, field)[start:start + chunk]
            assert got.shape == expected.shape and got.dtype == expected.dtype, (field, got.shape, got.dtype)
            if not np.array_equal(got, expected):
                axes = tuple(range(2, got.ndim))
                differ = (got != expected).any(axis=axes) if axes else got != expected
                g, t = map(int, np.argwhere(differ)[0])
                pytest.fail(f"{size}x{size} game {start + g} move {t}: {field} differs\n"
                            f"game: {games[start + g].tolist()}\nfast: {got[g, t].tolist()}\n"
                            f"reference: {expected[g, t].tolist()}")
    return record


def legal_before(record: ot.Replay, size: int) -> np.ndarray:
    """bool ``[n, n_moves, squares]``: the legal squares for the player about to play move ``t``."""
    start = np.zeros(size * size, dtype=bool)
    start[Othello(size).moves] = True
    first = np.broadcast_to(start, (record.legal.shape[0], 1, size * size))
    return np.concatenate([first, record.legal[:, :-1]], axis=1)


def parse(diagram: str) -> list[list[int]]:
    """``'.XO'`` rows (X black, O white) -> a board."""
    return [[".XO".index(ch) for ch in row] for row in diagram.split()]


# --- (a) agreement with the reference ---

@pytest.fixture(scope="module")
def games6() -> np.ndarray:
    return ot.random_games(10_000, size=6, seed=0)


def test_agrees_with_reference_on_10k_6x6_games(games6):
    assert games6.shape == (10_000, 32) and games6.dtype == np.int64
    assert_agrees(games6, 6)


@pytest.mark.parametrize("size", [4, 8])
def test_agrees_with_reference_on_4x4_and_8x8_games(size):
    games = ot.random_games(300, size=size, seed=1)
    assert games.shape == (300, size * size - 4)
    assert_agrees(games, size)


@pytest.mark.parametrize("size,n", [(6, 1000), (4, 300), (8, 100)])
def test_reference_games_replay_in_the_fast_engine(size, n):
    """The reference's own random games are legal for the fast engine, which records them as the reference does."""
    games = np.array(random_games_reference(n, size, seed=size), dtype=np.int64)
    assert_agrees(games, size)


def test_random_game_moves_are_uniform_over_the_legal_ones(games6):
    games = games6[:4000]
    # the first move: uniform over black's four openings
    openings = Othello(6).moves
    assert openings == [8, 13, 22, 27]
    counts = [(games[:, 0] == s).sum() for s in openings]
    assert sum(counts) == len(games)
    assert chi_square(counts) < CHI2_999[3], counts
    # every later move too: among positions with k legal moves, the rank of the one played is uniform over 0..k-1
    record = ot.replay(games, 6)
    before = legal_before(record, 6)
    played = games >= 0
    k = before.sum(-1)
    rank = (np.cumsum(before, -1) * (np.arange(36) < np.maximum(games, 0)[..., None])).max(-1)
    assert before[played, games[played]].all()
    for n_legal in range(2, 10):
        at = played & (k == n_legal)
        if at.sum() < 50 * n_legal:
            continue
        counts = np.bincount(rank[at], minlength=n_legal)
        assert len(counts) == n_legal and chi_square(counts) < CHI2_999[n_legal - 1], (n_legal, counts)


def test_fast_and_reference_generators_agree_in_distribution(games6):
    """Game length, passes, early ends and the winner: the two samplers draw from the same distribution."""

    def stats(games):
        record = ot.replay(games, 6)
        length = (games >= 0).sum(1)
        live = record.mover[:, 1:] > 0
        passed = ((record.mover[:, 1:] == record.mover[:, :-1]) & live).any(1)
        final = record.boards[np.arange(len(games)), length - 1].reshape(len(games), -1)
        early = (final == 0).any(1)
        black_wins = (final == BLACK).sum(1) > (final == WHITE).sum(1)
        return length.astype(float), passed, early, black_wins

    fast = stats(games6[:6000])
    ref = stats(np.array(random_games_reference(2000, 6, seed=123), dtype=np.int64))
    for name, a, b in zip(["length", "passes", "early ends", "black wins"], fast, ref):
        se = np.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) < 5 * se + 1e-9, (name, a.mean(), b.mean(), se)
    # both kinds of game occur in the sample (and so in the 10k agreement test)
    assert fast[1].mean() > 0.05 and fast[2].mean() > 0.01


# --- (b) seeds ---

def test_same_seed_same_games_and_different_seeds_differ():
    a = ot.random_games(200, 6, seed=7)
    assert np.array_equal(a, ot.random_games(200, 6, seed=7))
    assert np.array_equal(a, ot.random_games(200, 6, seed=np.random.default_rng(7)))
    b = ot.random_games(200, 6, seed=8)
    assert not np.array_equal(a, b)
    assert (a != b).any(1).mean() > 0.9  # not just a game or two
    # a prefix of more games is the same games
    assert np.array_equal(a[:50], ot.random_games(50, 6, seed=7))
    assert ot.random_games(0, 6, seed=7).shape == (0, 32)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunk_size_does_not_change_the_games(chunk):
    n = 30 if chunk == 1 else 100
    assert np.array_equal(ot.random_games(n, 6, seed=3, chunk=chunk), ot.random_games(n, 6, seed=3))


# --- (c) passes and early ends ---

def test_a_pass_by_hand():
    """4x4: black has no move after white's move 9, so white plays moves 9 and 10."""
    game = [1, 2, 15, 14, 3, 8, 13, 0, 11, 7, 12, 4]
    record = ot.replay(game, 4)
    # after move 9 (white on 7): black's empty squares 4 and 12 bracket nothing, so black passes
    assert record.boards[0, 9].tolist() == parse("OXXX .OOO OXXX .XXX")
    assert record.mover[0, 9] == WHITE and record.player[0, 9] == WHITE
    assert np.flatnonzero(record.legal[0, 9]).tolist() == [12]  # white: 12 brackets 9 against 6
    # move 10: white again, on 12, turning 9; then black on 4 turns 9 back; the board is full
    assert record.mover[0, 10] == WHITE and np.flatnonzero(record.flipped[0, 10]).tolist() == [9]
    assert record.boards[0, 10].tolist() == parse("OXXX .OOO OOXX OXXX")
    assert record.player[0, 10] == BLACK and np.flatnonzero(record.legal[0, 10]).tolist() == [4]
    assert record.mover[0, 11] == BLACK and np.flatnonzero(record.flipped[0, 11]).tolist() == [9]
    assert record.boards[0, 11].tolist() == parse("OXXX XOOO OXXX OXXX")
    assert record.player[0, 11] == 0 and not record.legal[0, 11].any()
    assert record.mover[0].tolist() == [1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 2, 1]
    assert_agrees(np.array([game]), 4)


def test_a_game_that_ends_early_by_hand():
    """4x4, six moves: white passes at move 4, black plays again, and then neither can move with six squares empty."""
    game = [4, 8, 12, 0, 2, 15] + [-1] * 6
    record = ot.replay(game, 4)
    assert record.boards[0, 3].tolist() == parse("O... XOX. XXO. X...")
    assert np.flatnonzero(record.legal[0, 3]).tolist() == [1, 2, 11, 14] and record.player[0, 3] == BLACK
    # black on 2 turns 5; white (on 0 and 10) then brackets nothing
    assert record.boards[0, 4].tolist() == parse("O.X. XXX. XXO. X...")
    assert np.flatnonzero(record.flipped[0, 4]).tolist() == [5]
    assert record.player[0, 4] == BLACK and np.flatnonzero(record.legal[0, 4]).tolist() == [11, 14, 15]
    # black on 15 turns 10: white's only disc is the corner 0, which nothing can bracket
    assert record.boards[0, 5].tolist() == parse("O.X. XXX. XXX. X..X")
    assert record.mover[0, 5] == BLACK and record.player[0, 5] == 0 and not record.legal[0, 5].any()
    assert (record.boards[0, 6:] == -1).all() and not record.legal[0, 6:].any() and not record.flipped[0, 6:].any()
    assert (record.player[0, 6:] == 0).all() and (record.mover[0, 6:] == 0).all()
    assert_agrees(np.array([game]), 4)


def test_passes_and_early_ends_occur_in_random_games(games6):
    record = ot.replay(games6[:2000], 6)
    live = record.mover[:, 1:] > 0
    passes = np.argwhere((record.mover[:, 1:] == record.mover[:, :-1]) & live)
    assert len(passes) > 50
    g, t = map(int, passes[0])  # move t + 1 is played by the player who played move t
    mover = record.mover[g, t]
    assert record.player[g, t] == mover
    othello = Othello(6)
    for square in games6[g, :t + 1]:
        othello.play(int(square))
    assert othello.to_move == mover and not othello.legal_moves(opponent(mover))
    length = (games6[:2000] >= 0).sum(1)
    assert (length < 32).any() and (length == 32).any()


# --- (d) illegal moves and bad arguments ---

def test_illegal_moves_name_the_game_and_move():
    games = ot.random_games(4, 6, seed=0)
    assert issubclass(ot.IllegalMoveError, ValueError)

    def error(g, t, square):
        bad = games.copy()
        bad[g, t] = square
        with pytest.raises(ot.IllegalMoveError) as info:
            ot.replay(bad, 6)
        return str(info.value)

    record = ot.replay(games, 6)
    occupied = int(np.flatnonzero(record.boards[2, 2].reshape(-1) > 0)[0])
    empty_not_legal = int(np.flatnonzero((record.boards[2, 2].reshape(-1) == 0) & ~record.legal[2, 2])[0])
    for square in (occupied, empty_not_legal):
        message = error(2, 3, square)
        assert "game 2, move 3" in message and "not legal" in message and str(square) in message
        with pytest.raises(IllegalMove):  # the reference agrees
            replay_reference([int(s) for s in games[2, :3]] + [square], 6)
    for square in (36, 100, -2):
        message = error(1, 5, square)
        assert "game 1, move 5" in message and "not a square" in message
    # a move after -1 padding
    bad = games.copy()
    bad[3, 4] = -1
    message = pytest.raises(ot.IllegalMoveError, ot.replay, bad, 6).value.args[0]
    assert "game 3, move 5" in message and "after the game's end" in message
    # the first bad move is reported (earliest move, then lowest game)
    bad = games.copy()
    bad[0, 7], bad[3, 2], bad[1, 2] = 40, 40, 40
    assert "game 1, move 2" in pytest.raises(ot.IllegalMoveError, ot.replay, bad, 6).value.args[0]


def test_a_move_after_the_natural_end_is_illegal():
    game = [4, 8, 12, 0, 2, 15, 1] + [-1] * 5  # the game above ends after six moves; square 1 is empty
    with pytest.raises(ot.IllegalMoveError, match="game 0, move 6: .*after the game's end"):
        ot.replay(game, 4)
    with pytest.raises(IllegalMove):
        replay_reference(game, 4)


@pytest.mark.parametrize("size", [0, 2, 3, 5, 7, 9, 10, 12])
def test_bad_sizes_raise(size):
    with pytest.raises(ValueError):
        ot.random_games(2, size)
    with pytest.raises(ValueError):
        ot.replay([[-1]], size)
    with pytest.raises(ValueError):
        ot.start_position(size)


def test_bad_game_arrays_raise():
    with pytest.raises(ValueError):
        ot.replay(np.zeros((2, 33), dtype=np.int64), 6)  # longer than any 6x6 game
    with pytest.raises(ValueError):
        ot.replay(np.zeros((2, 3), dtype=float), 6)
    # a single game as a 1-d list is one game
    assert ot.replay([8, 7], 6).boards.shape == (1, 2, 6, 6)


# --- (e) probe labels ---

def test_board_labels_by_hand():
    # black plays 8 (turning 14): black on 8, 14, 15, 20; white on 21; white to move
    record = ot.replay([[8, -1]], 6)
    colour = ot.board_labels(record, "colour")
    mine = ot.board_labels(record, "mine")
    flip = ot.board_labels(record, "flipped")
    assert colour.shape == mine.shape == flip.shape == (1, 2, 36)
    black, white = [8, 14, 15, 20], [21]
    assert np.flatnonzero(colour[0, 0] == 1).tolist() == black and np.flatnonzero(colour[0, 0] == 2).tolist() == white
    assert record.player[0, 0] == WHITE
    assert np.flatnonzero(mine[0, 0] == 1).tolist() == white  # mine = the player to move (white)
    assert np.flatnonzero(mine[0, 0] == 2).tolist() == black
    assert (mine[0, 0] == 0).sum() == 31
    assert np.flatnonzero(flip[0, 0]).tolist() == [14] and set(flip[0, 0].tolist()) == {0, 1}
    for labels in (colour, mine, flip):
        assert (labels[0, 1] == -1).all()
    # after white's reply (7, turning 14 back: 7-14-21 is a diagonal), black is to move: mine = black
    record = ot.replay([[8, 7]], 6)
    mine = ot.board_labels(record, "mine")
    assert record.player[0, 1] == BLACK and np.flatnonzero(record.flipped[0, 1]).tolist() == [14]
    assert np.flatnonzero(mine[0, 1] == 1).tolist() == [8, 15, 20]
    assert np.flatnonzero(mine[0, 1] == 2).tolist() == [7, 14, 21]
    with pytest.raises(ValueError):
        ot.board_labels(record, "theirs")


def test_board_labels_against_the_reference(games6):
    """'mine' follows the player to move through passes; at the end it is relative to the last mover's opponent."""
    small = np.array([[4, 8, 12, 0, 2, 15] + [-1] * 6, [1, 2, 15, 14, 3, 8, 13, 0, 11, 7, 12, 4]])
    for games, size in ((games6[:300], 6), (small, 4)):
        record = ot.replay(games, size)
        labels = {kind: ot.board_labels(record, kind) for kind in ("colour", "mine", "flipped")}
        for g, game in enumerate(games.tolist()):
            for t, r in enumerate(replay_reference(game, size)):
                cells = [c for row in r["board"] for c in row]
                if r["mover"] == 0:
                    expected = {kind: [-1] * size * size for kind in labels}
                else:
                    me = r["player"] if r["player"] else opponent(r["mover"])
                    expected = {"colour": cells,
                                "mine": [0 if c == 0 else 1 if c == me else 2 for c in cells],
                                "flipped": [int(s in r["flipped"]) for s in range(size * size)]}
                for kind in labels:
                    assert labels[kind][g, t].tolist() == expected[kind], (size, g, t, kind)
