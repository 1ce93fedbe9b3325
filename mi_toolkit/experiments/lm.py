"""A language model trained here (``mi-toolkit lm``): a byte-pair tokenizer and a one-layer transformer with 512
MLP neurons (as in Bricken et al. 2023) trained on the Python standard library's own source, the text every Python
installation carries. The run directory holds the tokenizer as ``tokenizer.json`` (the ``tokenizers`` library's
format) and the token streams in ``tokens.safetensors``; :func:`mi_toolkit.load_run` gives the model and a
:class:`~mi_toolkit.tasks.text.TextTask` whose ``tokenizer`` encodes and decodes."""

import dataclasses
import html
import sysconfig
import time
from pathlib import Path

import torch

from mi_toolkit import plot
from mi_toolkit.core.io import CheckpointError, Run, load_tensors, save_json, save_tensors
from mi_toolkit.core.losses import next_token_loss
from mi_toolkit.core.tl import HookedTransformer, HookedTransformerConfig
from mi_toolkit.experiments.runs import check_out_dir, load_model, register_loader
from mi_toolkit.models.factory import build_model, model_config_dict, model_config_from_dict
from mi_toolkit.report import table_html, write_html
from mi_toolkit.tasks.text import (
    TextTask,
    python_source_files,
    split_files,
    tokenize_files,
    train_tokenizer,
    unigram_loss,
)
from mi_toolkit.training.recipes import LM, LM_TINY
from mi_toolkit.training.trainer import train

__all__ = ["LMConfig", "PROMPTS", "analyse_lm", "complete", "lm_model_config", "run_lm", "write_lm_report"]

_PRESETS = {
    "small": dict(vocab_size=4096, d_model=128, n_heads=4, d_mlp=512, n_ctx=128, batch_size=32, max_files=None),
    "tiny": dict(vocab_size=300, d_model=32, n_heads=2, d_mlp=64, n_ctx=32, batch_size=8, max_files=24),
}
_RECIPES = {"small": LM, "tiny": LM_TINY}

PROMPTS = ("def __init__(self", "import os\nimport ", "    for i in range(", "class ", "        raise ValueError(")
"""Prompts whose completions the report shows."""


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Settings of :func:`run_lm`.

    Args:
        preset: ``"small"`` (vocabulary 4096, d_model 128, d_mlp 512, context 128; minutes) or ``"tiny"``
            (vocabulary 300, d_mlp 64, the first 24 files; seconds, for tests).
        root: directory of the source files; default the standard library (``sysconfig``).
        seed: seeds the file split, the model and the batches.
        heldout_fraction: fraction of the files held out.
        steps: override the recipe's number of steps.
        max_files: override the preset's cap on the number of files (the first ones, sorted).
        device: torch device.
    """

    preset: str = "small"
    root: str | None = None
    seed: int = 0
    heldout_fraction: float = 0.1
    steps: int | None = None
    max_files: int | None = None
    device: str = "cpu"

    def __post_init__(self):
        if self.preset not in _PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {sorted(_PRESETS)}")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must lie in (0, 1), got {self.heldout_fraction}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.max_files is not None and self.max_files < 2:
            raise ValueError(f"max_files must be >= 2, got {self.max_files}")

    @property
    def settings(self) -> dict:
        """The preset's sizes, with ``max_files`` overridden."""
        found = dict(_PRESETS[self.preset])
        if self.max_files is not None:
            found["max_files"] = self.max_files
        return found

    @property
    def recipe(self):
        recipe = _RECIPES[self.preset]
        return recipe if self.steps is None else recipe.replace(steps=self.steps)


def lm_model_config(d_vocab: int, *, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512, n_ctx: int = 128
                    ) -> HookedTransformerConfig:
    """One layer, pre-LayerNorm, ReLU MLP (``blocks.0.mlp.hook_post`` is what an SAE reads), learned positions."""
    return HookedTransformerConfig(n_layers=1, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
                                   d_mlp=d_mlp, act_fn="relu", normalization_type="LN", d_vocab=d_vocab,
                                   n_ctx=n_ctx, positional_embedding_type="standard")


@torch.no_grad()
def complete(model: HookedTransformer, tokenizer, prompt: str, n_tokens: int = 40) -> str:
    """Greedy continuation of ``prompt`` (``n_tokens`` tokens, within the context), as text."""
    ids = torch.tensor([tokenizer.encode(prompt).ids], device=next(model.parameters()).device)
    start = ids.shape[1]
    for _ in range(n_tokens):
        logits = model(ids[:, -model.cfg.n_ctx:])[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return tokenizer.decode(ids[0, start:].tolist())


def run_lm(out: str | Path | None, config: LMConfig = LMConfig(), *, progress: bool = True, report: bool = True
           ) -> Run:
    """Train the tokenizer and the one-layer language model; measure held-out loss against the unigram baseline.

    Bad input (no source directory, too few files, an ``out`` holding something else) raises before any training.

    Args:
        out: the run directory (new or empty), or None to keep everything in memory.
        config: the settings.
        progress: show a progress bar.
        report: write ``report.html``.

    Returns:
        A :class:`~mi_toolkit.core.io.Run`; ``analysis`` holds ``heldout_loss``, ``unigram_loss``, the corpus sizes,
        sample ``completions`` and ``seconds``.
    """
    s = config.settings
    files = python_source_files(config.root, min_files=2, max_files=s["max_files"])
    root = Path(sysconfig.get_paths()["stdlib"] if config.root is None else config.root)
    train_files, heldout_files = split_files(files, config.heldout_fraction, seed=config.seed)
    record = {"kind": "lm", "config": dataclasses.asdict(config), "seed": config.seed,
              "train": config.recipe.to_dict(),
              "files": {"train": [str(f) for f in train_files], "heldout": [str(f) for f in heldout_files]}}
    if out is not None:
        out = Path(out)
        check_out_dir(out, record, ("config",))
        out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer = train_tokenizer(train_files, s["vocab_size"])
    d_vocab = tokenizer.get_vocab_size()
    train_tokens, heldout_tokens = tokenize_files(tokenizer, train_files), tokenize_files(tokenizer, heldout_files)
    seconds = {"tokenizer": round(time.perf_counter() - started, 2)}
    task = TextTask(train_tokens, heldout_tokens, d_vocab, seq_len=s["n_ctx"], batch_size=s["batch_size"],
                    seed=config.seed, device=config.device, tokenizer=tokenizer)
    model = build_model(lm_model_config(d_vocab, **{k: s[k] for k in ("d_model", "n_heads", "d_mlp", "n_ctx")}),
                        seed=config.seed, device=config.device)
    record["model"] = model_config_dict(model.cfg)
    if out is not None:
        tokenizer.save(str(out / "tokenizer.json"))
        save_tensors(out / "tokens.safetensors", {"train": _compact(train_tokens, d_vocab),
                                                          "heldout": _compact(heldout_tokens, d_vocab)})
        save_json(out / "config.json", record)
    started = time.perf_counter()
    result = train(model, task, config.recipe, out, progress=progress)
    seconds["train"] = round(time.perf_counter() - started, 2)
    model.eval()
    analysis = analyse_lm(model, task)
    analysis.update(n_files={"train": len(train_files), "heldout": len(heldout_files)}, d_vocab=d_vocab,
                    root=str(root), steps=result.final_step, resumed_from=result.resumed_from, seconds=seconds)
    if out is not None:
        save_tensors(out / "model.safetensors", model.state_dict())
        save_json(out / "analysis.json", analysis)
        if report:
            write_lm_report(out / "report.html", result.history, analysis)
    return Run(out, model, task, result.history, record, analysis)


@torch.no_grad()
def analyse_lm(model: HookedTransformer, task: TextTask, n_windows: int = 256) -> dict:
    """Held-out loss on ``n_windows`` evenly spaced windows, the unigram baseline on the held-out stream, the
    corpus sizes and greedy completions of :data:`PROMPTS`."""
    windows = task.heldout_windows(n_windows)
    losses = [next_token_loss(model(chunk), chunk).item() for chunk in windows.split(32)]
    sizes = [len(chunk) for chunk in windows.split(32)]
    return {
        "heldout_loss": sum(l * n for l, n in zip(losses, sizes)) / sum(sizes),
        "unigram_loss": unigram_loss(task.heldout_tokens, task.d_vocab),
        "n_tokens": {"train": len(task.train_tokens), "heldout": len(task.heldout_tokens)},
        "completions": {p: complete(model, task.tokenizer, p) for p in PROMPTS} if task.tokenizer else {},
    }


def write_lm_report(path, history: list[dict], analysis: dict) -> None:
    """The run's report: held-out loss beside the unigram baseline, the loss curves, sample completions."""
    a = analysis
    rows = [["held-out loss (nats/token)", f"{a['heldout_loss']:.4f}"],
            ["unigram baseline on the held-out tokens", f"{a['unigram_loss']:.4f}"],
            ["vocabulary", a["d_vocab"]], ["files (train / held-out)", f"{a['n_files']['train']} / "
                                                                         f"{a['n_files']['heldout']}"],
            ["tokens (train / held-out)", f"{a['n_tokens']['train']:,} / {a['n_tokens']['heldout']:,}"],
            ["steps", a["steps"]], ["seconds (tokenizer, training)", f"{a['seconds']['tokenizer']}, "
                                                                     f"{a['seconds']['train']}"]]
    if a.get("resumed_from"):
        rows.append(["resumed from step (the seconds are this call's)", a["resumed_from"]])
    completions = "".join(f"<h3>{html.escape(repr(p))}</h3><pre>{html.escape(p)}<b>{html.escape(c)}</b></pre>"
                          for p, c in a["completions"].items())
    write_html(path, "A one-layer language model on the Python standard library",
               [("Summary", table_html(["", "value"], rows)),
                ("Training", plot.lm_training(history, a["unigram_loss"])),
                ("Greedy completions (prompt, then the model's tokens in bold)", completions)])


def _compact(tokens: torch.Tensor, d_vocab: int) -> torch.Tensor:
    """Token ids in 16 bits where they fit (the stream of the standard library is ~10M tokens)."""
    return tokens.short() if d_vocab <= torch.iinfo(torch.int16).max else tokens.int()


def _load(path: Path, record: dict, device: str) -> Run:
    from tokenizers import Tokenizer

    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"tokenizer not found: {path / 'tokenizer.json'}")
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokens, _ = load_tensors(path / "tokens.safetensors")
    config = LMConfig(**record["config"])
    task = TextTask(tokens["train"].long(), tokens["heldout"].long(), tokenizer.get_vocab_size(),
                    seq_len=config.settings["n_ctx"], batch_size=config.settings["batch_size"], seed=config.seed,
                    device=device, tokenizer=tokenizer)
    model = build_model(model_config_from_dict(record["model"]), device=device)
    return Run(path, load_model(path, model), task, [], record, {})


register_loader("lm", _load)
