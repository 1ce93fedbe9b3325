"""Every experiment's training recipe, as a :class:`~mi_toolkit.training.trainer.TrainConfig` preset.

Change one with ``replace``: ``GROKKING_FAST.replace(steps=600, log_every=600)``.
"""

from mi_toolkit.training.trainer import TrainConfig

__all__ = ["GROKKING_FAST", "GROKKING_PAPER", "GROKKING_RECIPES", "INDUCTION"]

GROKKING_PAPER = TrainConfig(steps=40_000, lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98), warmup_steps=10,
                             grad_filter="none")
"""Nanda et al. (2023): full-batch AdamW, lr 1e-3, wd 1, betas (0.9, 0.98), 10 warmup steps, 40k epochs."""

GROKKING_FAST = TrainConfig(steps=5_000, lr=3e-3, weight_decay=1.5, betas=(0.9, 0.98), warmup_steps=10,
                            grad_filter="ema")
"""Chosen by measurement on 2 CPU cores (README, "Choosing the fast recipe"): Grokfast EMA, lr 3e-3, wd 1.5.
``steps`` is the cap of a run that trains until it has grokked and cleaned up (:class:`~mi_toolkit.GrokkingConfig`)."""

GROKKING_RECIPES: dict[str, TrainConfig] = {"fast": GROKKING_FAST, "paper": GROKKING_PAPER}
"""The grokking recipes by the name ``mi-toolkit grokking --recipe`` takes."""

INDUCTION = TrainConfig(steps=600, lr=1e-2, weight_decay=0.01, betas=(0.9, 0.98), warmup_steps=50, log_every=100,
                        checkpoint_every=10_000)
"""The 2-layer attention-only induction model: forms both heads in well under a minute on a CPU."""
