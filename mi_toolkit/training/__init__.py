"""Layer 3: training. One trainer (:func:`train`), every recipe a :class:`TrainConfig` preset
(:mod:`~mi_toolkit.training.recipes`), Grokfast gradient filters, and the toy-model and SAE adapters over the trainer."""

from mi_toolkit.training.grokfast import GradientFilter, GrokfastEMA, GrokfastMA, make_filter
from mi_toolkit.training.recipes import GROKKING_FAST, GROKKING_PAPER, GROKKING_RECIPES, INDUCTION
from mi_toolkit.training.sae import train_sae
from mi_toolkit.training.toy import train_toy_model
from mi_toolkit.training.trainer import Task, TrainConfig, TrainingDivergedError, TrainResult, list_checkpoints, train
