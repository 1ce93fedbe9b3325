"""The model factory: ``HookedTransformer``s built locally with a seed, their configs as JSON, and pretrained
models converted from local files (no hub downloads unless asked for by name)."""

import dataclasses
from pathlib import Path

import torch

from mi_toolkit.core.tl import (
    HookedTransformer,
    HookedTransformerConfig,
    get_pretrained_model_config,
    get_pretrained_state_dict,
    quiet_construction,
)

__all__ = ["build_model", "load_pretrained", "model_config_dict", "model_config_from_dict"]


def build_model(
    cfg: HookedTransformerConfig | dict,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    freeze_biases: bool = False,
) -> HookedTransformer:
    """Build a ``HookedTransformer`` whose initial weights depend only on ``seed``.

    The weights are drawn on the CPU inside a forked RNG, so the same seed gives the same model on every device
    and the caller's global RNG is left untouched.

    Args:
        cfg: a config, or a dict of ``HookedTransformerConfig`` fields.
        seed: seed of the weight initialisation.
        device: where the returned model lives.
        freeze_biases: set ``requires_grad=False`` on every bias (as the TransformerLens grokking demo does);
            they keep their initial value, zero.

    Returns:
        The model, in train mode, on ``device``.
    """
    if isinstance(cfg, dict):
        cfg = HookedTransformerConfig(**cfg)
    cfg = dataclasses.replace(cfg, seed=None, device="cpu")
    with torch.random.fork_rng(devices=[]), quiet_construction():
        torch.manual_seed(seed)
        model = HookedTransformer(cfg, move_to_device=False)
    if freeze_biases:
        for name, param in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                param.requires_grad_(False)
    model.cfg.device = str(device)
    return torch.nn.Module.to(model, device)  # HookedTransformer.to would print a message


def model_config_dict(cfg: HookedTransformerConfig) -> dict:
    """``cfg`` as a JSON-safe dict (dtype as its name) that :func:`model_config_from_dict` turns back into it."""
    fields = dict(cfg.to_dict())  # to_dict may hand back the live __dict__
    fields["dtype"] = str(fields["dtype"]).removeprefix("torch.")
    fields["device"] = None
    return fields


def model_config_from_dict(fields: dict) -> HookedTransformerConfig:
    """Inverse of :func:`model_config_dict`."""
    fields = dict(fields)
    fields["dtype"] = getattr(torch, fields.get("dtype", "float32"))
    return HookedTransformerConfig(**fields)


def load_pretrained(
    name_or_path: str,
    *,
    device: str | torch.device = "cpu",
    hf_model=None,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
) -> HookedTransformer:
    """Load a pretrained causal LM (GPT-2 and the other architectures TransformerLens converts) as a HookedTransformer.

    A local directory written by ``transformers``' ``save_pretrained`` (or an already loaded ``hf_model`` with
    that directory's config) is converted without any network access; an official name such as ``"gpt2"`` goes
    through ``HookedTransformer.from_pretrained``, which downloads from the Hugging Face hub.

    Args:
        name_or_path: a local model directory, or an official model name.
        device: where the model lives.
        hf_model: an already loaded Hugging Face model for ``name_or_path`` (skips loading its weights again).
        fold_ln, center_writing_weights, center_unembed: TransformerLens's weight processing (log-probs unchanged).
    """
    processing = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed)
    if not Path(name_or_path).is_dir():
        with quiet_construction():
            return HookedTransformer.from_pretrained(name_or_path, device=device, hf_model=hf_model, **processing)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = get_pretrained_model_config(str(name_or_path), fold_ln=fold_ln, device="cpu")
    if hf_model is None:
        hf_model = AutoModelForCausalLM.from_pretrained(str(name_or_path))
    state = get_pretrained_state_dict(str(name_or_path), cfg, hf_model=hf_model)
    has_tokenizer = any((Path(name_or_path) / f).exists() for f in ("tokenizer.json", "vocab.json", "tokenizer.model"))
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path)) if has_tokenizer else None
    with quiet_construction():
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state, **processing)
    model.cfg.device = str(device)
    return torch.nn.Module.to(model, device).eval()
