"""Language modelling on Python source: the standard library's ``*.py`` files found on the machine, a byte-pair
tokenizer trained on them here (the ``tokenizers`` library), and a next-token task over the token stream.

Files are split into training and held-out sets by file (a seeded permutation of the sorted list), so held-out
loss measures modelling of unseen modules, not of unseen windows of seen ones.
"""

import dataclasses
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from mi_toolkit.core.losses import next_token_loss
from mi_toolkit.core.tl import HookedTransformer

__all__ = ["EOT", "TextTask", "python_source_files", "split_files", "tokenize_files", "train_tokenizer",
           "unigram_loss"]

EOT = "<|endoftext|>"
"""The one special token (id 0): it separates files in the token stream."""


def python_source_files(root: str | Path | None = None, *, min_files: int = 2,
                        max_files: int | None = None) -> list[Path]:
    """The ``*.py`` files under ``root`` (default the standard library, ``sysconfig.get_paths()["stdlib"]``),
    sorted, without ``site-packages``/``dist-packages`` (installed packages are not the standard library).

    Args:
        root: the directory searched recursively.
        min_files: fewer files than this is an error (a split needs training and held-out files).
        max_files: keep only the first this many (sorted), e.g. for a quick run.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: fewer than ``min_files`` files.
    """
    root = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    if not root.is_dir():
        raise FileNotFoundError(f"no source directory at {root} (the Python standard library's source is needed)")
    files = sorted(f for f in root.rglob("*.py")
                   if f.is_file() and not {"site-packages", "dist-packages"} & set(f.relative_to(root).parts))
    files = files[:max_files] if max_files is not None else files
    if len(files) < min_files:
        raise ValueError(f"found {len(files)} *.py files under {root}; need at least {min_files}")
    return files


def split_files(files: Sequence[Path], heldout_fraction: float, *, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Split ``files`` into ``(train, heldout)`` by a seeded permutation; each part keeps the sorted order and
    holds at least one file."""
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}")
    if len(files) < 2:
        raise ValueError(f"need at least 2 files to split, got {len(files)}")
    n_heldout = min(max(1, round(len(files) * heldout_fraction)), len(files) - 1)
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    heldout = set(order[:n_heldout])
    return ([f for i, f in enumerate(files) if i not in heldout], [f for i, f in enumerate(files) if i in heldout])


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def train_tokenizer(files: Sequence[Path], vocab_size: int = 4096):
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on ``files``; id 0 is :data:`EOT`.

    Training is deterministic for the same files and ``vocab_size`` (BPE merges the most frequent pair, ties by
    order). Save it with ``tokenizer.save(path)`` and read it with ``tokenizers.Tokenizer.from_file(path)``.

    Returns:
        A ``tokenizers.Tokenizer``; ``decode(encode(text).ids) == text`` for any text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(f"vocab_size must be >= 257 (256 bytes and the end-of-text token), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator((_read(f) for f in files), trainer, length=len(files))
    return tokenizer


def tokenize_files(tokenizer, files: Sequence[Path]) -> Int[Tensor, " n_tokens"]:
    """One token stream: each file's tokens followed by :data:`EOT`."""
    eot = tokenizer.token_to_id(EOT)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch([_read(f) for f in files]):
        ids += encoding.ids
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)


def unigram_loss(tokens: Int[Tensor, " n_tokens"], d_vocab: int) -> float:
    """The unigram baseline: the entropy (nats) of the token frequencies of ``tokens``, i.e. the cross-entropy of
    the best context-free predictor fitted to these very tokens (a lower bound on any unigram model's loss)."""
    counts = torch.bincount(tokens, minlength=d_vocab).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


@dataclasses.dataclass(frozen=True)
class TextTask:
    """Next-token prediction on windows of a token stream; loss at every position.

    Args:
        train_tokens: the training stream (files joined by :data:`EOT`).
        heldout_tokens: the held-out stream (files no training window comes from).
        d_vocab: vocabulary size.
        seq_len: window length.
        batch_size: windows per training step, drawn uniformly (batch ``s`` depends on ``seed`` and ``s`` only).
        eval_batch: held-out windows in :meth:`evaluate` (fixed, evenly spaced).
        seed: seeds the training windows.
        device: where the batches live.
        tokenizer: the ``tokenizers.Tokenizer`` that made the streams (``tokenizer.decode(ids)`` gives text back).
    """

    train_tokens: Tensor = dataclasses.field(repr=False)
    heldout_tokens: Tensor = dataclasses.field(repr=False)
    d_vocab: int
    seq_len: int = 128
    batch_size: int = 32
    eval_batch: int = 64
    seed: int = 0
    device: str | torch.device = "cpu"
    tokenizer: object = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        for name in ("train_tokens", "heldout_tokens"):
            n = len(getattr(self, name))
            if n < self.seq_len + 1:
                raise ValueError(f"{name} holds {n} tokens, fewer than one window of seq_len + 1 = {self.seq_len + 1}")
        if self.batch_size < 1 or self.eval_batch < 1 or self.seq_len < 2:
            raise ValueError("batch_size and eval_batch must be >= 1 and seq_len >= 2")

    def check_model(self, model: HookedTransformer) -> None:
        """Raise ``ValueError`` if ``model`` cannot read this task's windows."""
        if model.cfg.d_vocab < self.d_vocab or model.cfg.n_ctx < self.seq_len:
            raise ValueError(f"model (d_vocab={model.cfg.d_vocab}, n_ctx={model.cfg.n_ctx}) does not fit the task: "
                             f"needs d_vocab >= {self.d_vocab} and n_ctx >= {self.seq_len}")

    def windows(self, stream: Tensor, starts: Tensor) -> Int[Tensor, "batch pos"]:
        """The windows ``stream[s : s + seq_len]`` for each start ``s``."""
        return stream[starts[:, None] + torch.arange(self.seq_len)].to(self.device)

    def heldout_windows(self, n: int) -> Int[Tensor, "batch pos"]:
        """``n`` evenly spaced held-out windows (fixed: the same ``n`` gives the same windows)."""
        last = len(self.heldout_tokens) - self.seq_len
        return self.windows(self.heldout_tokens, torch.linspace(0, last, n).long())

    # --- the training-task protocol of mi_toolkit.training ---
    def train_batch(self, step: int) -> Int[Tensor, "batch pos"]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.train_tokens) - self.seq_len + 1, (self.batch_size,), generator=gen)
        return self.windows(self.train_tokens, starts)

    def loss(self, model: HookedTransformer, batch: Tensor) -> Tensor:
        return next_token_loss(model(batch), batch)

    @torch.no_grad()
    def evaluate(self, model: HookedTransformer) -> dict[str, float]:
        """The next-token loss on :attr:`eval_batch` held-out windows."""
        tokens = self.heldout_windows(self.eval_batch)
        return {"heldout_loss": next_token_loss(model(tokens), tokens).item()}
