"""Model factories: small ``HookedTransformer``s built locally with a seed (no hub downloads)."""

import dataclasses

import torch

from mi_toolkit._tl import HookedTransformer, HookedTransformerConfig, quiet_construction

__all__ = ["build_model", "grokking_model_config", "make_grokking_model", "model_config_dict",
           "model_config_from_dict", "load_pretrained"]


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


def grokking_model_config(p: int = 113, **overrides) -> HookedTransformerConfig:
    """The 1-layer transformer of Nanda et al. (2023) for ``(a op b) mod p``.

    Inputs are ``[a, b, =]`` with '=' the token ``p`` (``d_vocab = p + 1``, ``d_vocab_out = p``, ``n_ctx = 3``);
    d_model 128, 4 heads of 32, d_mlp 512, ReLU, no LayerNorm, learned positions, untied embed/unembed.

    Args:
        p: the modulus.
        **overrides: any ``HookedTransformerConfig`` field, e.g. ``d_model=64``.
    """
    fields = dict(
        n_layers=1,
        d_model=128,
        d_head=32,
        n_heads=4,
        d_mlp=512,
        act_fn="relu",
        normalization_type=None,
        d_vocab=p + 1,
        d_vocab_out=p,
        n_ctx=3,
        positional_embedding_type="standard",
    )
    fields.update(overrides)
    return HookedTransformerConfig(**fields)


def make_grokking_model(
    p: int = 113,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    freeze_biases: bool = True,
    **overrides,
) -> HookedTransformer:
    """Build the grokking transformer (see :func:`grokking_model_config`); biases frozen at zero by default.

    >>> model = make_grokking_model(p=7, d_model=16, d_head=4, d_mlp=32)
    >>> model(torch.tensor([[1, 2, 7]])).shape
    torch.Size([1, 3, 7])
    """
    return build_model(grokking_model_config(p, **overrides), seed=seed, device=device, freeze_biases=freeze_biases)


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
    from pathlib import Path

    processing = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed)
    if not Path(name_or_path).is_dir():
        with quiet_construction():
            return HookedTransformer.from_pretrained(name_or_path, device=device, hf_model=hf_model, **processing)
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config, get_pretrained_state_dict
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
