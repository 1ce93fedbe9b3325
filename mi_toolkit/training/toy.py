"""Training the toy models of superposition through the one trainer (every instance at once)."""

import torch
from jaxtyping import Float
from torch import Tensor

from mi_toolkit.core.compat import renamed_kwargs
from mi_toolkit.models.toy import ToyModel, ToyModelConfig
from mi_toolkit.training.trainer import TrainConfig, train

__all__ = ["ToyData", "toy_train_config", "train_toy_model"]


def toy_train_config(config: ToyModelConfig) -> TrainConfig:
    """The recipe of :func:`train_toy_model`: Adam, learning rate cosine-decayed to zero, no weight decay."""
    return TrainConfig(steps=config.steps, lr=config.lr, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0,
                       optimizer="adam", lr_schedule="cosine", log_every=100, checkpoint_every=config.steps)


class ToyData:
    """Sparse feature vectors for a :class:`ToyModel`, as a task of :func:`mi_toolkit.training.train`.

    Batches come from one generator seeded with ``config.seed + 1``, drawn in step order (so a run is reproducible
    from the start, not resumable mid-way).
    """

    name = "toy models"

    def __init__(self, config: ToyModelConfig):
        self.batch_size = config.batch_size
        self.generator = torch.Generator().manual_seed(config.seed + 1)

    def train_batch(self, step: int) -> None:
        return None  # the model draws its own inputs (see loss)

    def loss(self, model: ToyModel, batch) -> Float[Tensor, ""]:
        # Each instance's loss depends only on its own weights, so summing trains them independently.
        return model.loss(model.sample(self.batch_size, self.generator)).sum()

    def evaluate(self, model: ToyModel) -> dict[str, float]:
        return {}


@renamed_kwargs(cfg="config")
def train_toy_model(
    config: ToyModelConfig, *, device: str | torch.device = "cpu", progress: bool = True
) -> ToyModel:
    """Train every instance of a :class:`ToyModel` at once.

    Args:
        config: model and training settings; one instance per entry of ``config.feature_probability``.
        device: where to train.
        progress: show a tqdm progress bar.

    Returns:
        The trained model, in eval mode.

    >>> model = train_toy_model(ToyModelConfig(n_features=5, d_hidden=2, feature_probability=(1.0, 0.05), steps=10),
    ...                         progress=False)
    >>> model.W.shape
    torch.Size([2, 2, 5])
    """
    model = ToyModel(config).to(device)
    if config.steps:
        train(model, ToyData(config), toy_train_config(config), progress=progress)
    return model.eval()
