"""Every experiment's training recipe, as a :class:`~mi_toolkit.training.trainer.TrainConfig` preset.

Change one with ``replace``: ``GROKKING_FAST.replace(steps=600, log_every=600)``.
"""

import math

from mi_toolkit.training.trainer import TrainConfig

__all__ = ["FACTS", "FACTS_TINY", "FACT_BATCH_SIZE", "FACT_RECIPES", "FAST_REFERENCE_PAIRS", "GROKKING_FAST", "GROKKING_PAPER", "GROKKING_RECIPES", "INDUCTION", "IOI", "LM", "LM_TINY", "OTHELLO", "OTHELLO_RECIPES", "grokking_recipe"]

GROKKING_PAPER = TrainConfig(steps=40_000, lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98), warmup_steps=10,
                             grad_filter="none")
"""Nanda et al. (2023): full-batch AdamW, lr 1e-3, wd 1, betas (0.9, 0.98), 10 warmup steps, 40k epochs."""

GROKKING_FAST = TrainConfig(steps=5_000, lr=5e-3, weight_decay=3.0, betas=(0.9, 0.98), warmup_steps=10,
                            grad_filter="none")
"""Chosen by measurement on 2 CPU cores (README, "Choosing the fast recipe"): the paper's optimiser with 5x its
learning rate, no Grokfast filter (the EMA filter kept small training sets from grokking), and a weight decay of 3
at :data:`FAST_REFERENCE_PAIRS` training pairs that :func:`grokking_recipe` scales with the training set.
``steps`` is the cap of a run that trains until its algorithm checks pass (:class:`~mi_toolkit.GrokkingConfig`)."""

GROKKING_RECIPES: dict[str, TrainConfig] = {"fast": GROKKING_FAST, "paper": GROKKING_PAPER}
"""The grokking recipes by the name ``mi-toolkit grokking --recipe`` takes."""

FAST_REFERENCE_PAIRS = 2000
"""The training-set size at which the fast recipe's weight decay is ``GROKKING_FAST.weight_decay``."""


def grokking_recipe(name: str, n_train: int) -> TrainConfig:
    """The recipe ``name`` for a training set of ``n_train`` examples.

    ``"fast"`` scales its weight decay as ``3 * sqrt(2000 / n_train)``: small training sets are cheap to memorise
    and need a stronger pull to the general solution (p = 53 at 30%, 842 pairs: one seed of five stayed at 97.7%
    test accuracy with weight decay 3, and grokked with 4.6), large ones keep more key frequencies with a weaker one
    (p = 127 at 60%: two seeds of five ended with two frequencies at weight decay 3, four at 1.36). ``"paper"`` is
    returned as it is.
    """
    if name not in GROKKING_RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(GROKKING_RECIPES)}")
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    recipe = GROKKING_RECIPES[name]
    if name != "fast":
        return recipe
    scale = math.sqrt(FAST_REFERENCE_PAIRS / n_train)
    return recipe.replace(weight_decay=round(recipe.weight_decay * scale, 4))

INDUCTION = TrainConfig(steps=600, lr=1e-2, weight_decay=0.01, betas=(0.9, 0.98), warmup_steps=50, log_every=100,
                        checkpoint_every=10_000)
"""The 2-layer attention-only induction model: forms both heads in well under a minute on a CPU."""

IOI = TrainConfig(steps=1500, lr=3e-3, weight_decay=0.3, betas=(0.9, 0.98), warmup_steps=50, log_every=100,
                  checkpoint_every=10_000)
"""The symbolic-IOI model (:func:`~mi_toolkit.models.presets.ioi_model_config`): > 99% accuracy by step 200-400;
the rest of the steps, under weight decay 0.3, prune the mechanism to a few heads. With weight decay 0.01 the same
accuracy came with the work spread over every head (ACDC kept 22-26 of 81 edges, against 8 with 0.3;
``benchmarks/circuits.py``)."""

FACTS = TrainConfig(steps=2000, lr=3e-3, weight_decay=0.01, betas=(0.9, 0.98), warmup_steps=100,
                    lr_schedule="cosine", log_every=250, checkpoint_every=500)
"""The fact model (``mi-toolkit facts``), 256 prompts a step; ``steps`` is a cap: the run stops once recall reaches
its target (99.30% at step 1,000 with seed 0, 358 s on one thread). lr 5e-3 with 128 prompts stalled at 30% recall
after 2,400 steps; 3e-3 with 256 reached 99.2% at step 1,000 with global attention too."""

FACTS_TINY = TrainConfig(steps=800, lr=1e-2, weight_decay=0.01, betas=(0.9, 0.98), warmup_steps=20,
                         lr_schedule="cosine", log_every=100, checkpoint_every=600)
"""The tiny fact model (tests, the reversal benchmark), 32 prompts a step: 99.4% recall of 80 facts in 700 steps."""

FACT_RECIPES: dict[str, TrainConfig] = {"small": FACTS, "tiny": FACTS_TINY}
FACT_BATCH_SIZE: dict[str, int] = {"small": 256, "tiny": 32}

LM = TrainConfig(steps=3000, lr=3e-3, weight_decay=0.1, betas=(0.9, 0.98), warmup_steps=100, lr_schedule="cosine",
                 grad_clip=1.0, log_every=250, checkpoint_every=1000)
"""The one-layer language model on Python source (``mi-toolkit lm``), 32 windows of 128 tokens a step; sized to
train in under 15 minutes on 2 CPU cores: 0.23 s a step measured with 2 threads, so 3,000 steps (12M tokens, about
1.3 passes over the ~9M training tokens) take about 12 minutes; 0.24 s on an AVX2-only CPU (12 min 46 s for the
command), 0.42 s there before two changes of 2026-12 that leave the weights as they were (README)."""

LM_TINY = TrainConfig(steps=30, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.98), warmup_steps=5, lr_schedule="cosine",
                      log_every=10, checkpoint_every=1000)
"""The tiny language model (tests, tutorials): seconds."""


OTHELLO = TrainConfig(steps=4000, lr=5e-3, weight_decay=0.01, betas=(0.9, 0.98), warmup_steps=100,
                      lr_schedule="cosine", optimizer="muon", muon_lr=0.04, autocast="auto", compile=True,
                      log_every=250, checkpoint_every=500)
"""The 6x6 Othello-GPT (``mi-toolkit othello``), 256 fresh games a step, Muon for the weight matrices, bfloat16
autocast where the device has bfloat16 arithmetic (``"auto"``; float32 elsewhere), compiled: 4,000 steps took
473-505 s on 2 cores with AVX512-BF16 (the whole command 8.5-9 minutes); on an AVX2-only CPU a compiled step takes
0.56 s in float32 and 10.1 s in emulated bfloat16 (the whole command in float32: 41 minutes). Chosen by measurement
(README, "Othello"): Muon at 0.04 reached AdamW's legal top-1 in half the steps (0.02 and 0.08 did no better); with
AdamW, at equal games seen, lr 5e-3 beat 3e-3, 4 layers of d_model 128 beat 6 of 64 and matched 6 of 128 at 40% less
time per step; 8 heads matched 4."""

OTHELLO_TINY = OTHELLO.replace(steps=60, warmup_steps=10, compile=False, log_every=30, checkpoint_every=30)
"""The tiny preset, for tests."""

OTHELLO_RECIPES = {"small": OTHELLO, "tiny": OTHELLO_TINY}
