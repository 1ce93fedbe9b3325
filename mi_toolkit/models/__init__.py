"""Layer 2: models. The factory builds any ``HookedTransformer`` from a config and a seed; presets are the
architectures the experiments train; the toy models of superposition and sparse autoencoders are small
``nn.Module``s of their own."""

from mi_toolkit.models.factory import build_model, load_pretrained, model_config_dict, model_config_from_dict
from mi_toolkit.models.presets import (
    grokking_model_config,
    induction_model_config,
    ioi_model_config,
    make_grokking_model,
    make_induction_model,
)
from mi_toolkit.models.presets import FACT_PRESETS, fact_model_config, make_fact_model
from mi_toolkit.models.presets import OTHELLO_PRESETS, othello_model_config
from mi_toolkit.models.sae import SAE, SAEConfig, load_sae
from mi_toolkit.models.toy import ToyModel, ToyModelConfig
