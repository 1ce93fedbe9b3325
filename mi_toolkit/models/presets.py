"""Model presets: the architecture each experiment trains, as a config and as a seeded model
(:func:`mi_toolkit.models.factory.build_model` under every one)."""

import torch

from mi_toolkit.core.tl import HookedTransformer, HookedTransformerConfig
from mi_toolkit.models.factory import build_model

__all__ = ["FACT_PRESETS", "OTHELLO_PRESETS", "fact_model_config", "grokking_model_config", "induction_model_config", "ioi_model_config", "make_fact_model", "make_grokking_model",
           "make_induction_model", "othello_model_config", "with_attn_types"]


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


def induction_model_config(d_vocab: int = 64, n_ctx: int = 32, **overrides) -> HookedTransformerConfig:
    """A 2-layer attention-only transformer: d_model 64, 4 heads of 16, rotary positions, no LayerNorm.

    Rotary positions make "attend to the previous token" one relative offset at every position, and without
    LayerNorm attention can sharpen quickly: with the default training, a layer-0 head reaches a previous-token
    score above 0.9 within a few hundred steps (learned absolute positions and LayerNorm took several times
    longer in our measurements, with layer-0 scores stuck near 0.6-0.75 after 1,000 steps).

    Args:
        d_vocab: vocabulary size (input and output).
        n_ctx: context length.
        **overrides: any ``HookedTransformerConfig`` field.
    """
    fields = dict(
        n_layers=2,
        d_model=64,
        n_heads=4,
        d_head=16,
        attn_only=True,
        normalization_type=None,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        positional_embedding_type="rotary",
    )
    fields.update(overrides)
    if fields["positional_embedding_type"] == "rotary":
        fields.setdefault("rotary_dim", fields["d_head"])
    return HookedTransformerConfig(**fields)


def make_induction_model(
    d_vocab: int = 64, n_ctx: int = 32, *, seed: int = 0, device: str | torch.device = "cpu", **overrides
) -> HookedTransformer:
    """Build the (untrained) induction model of :func:`induction_model_config` with a seeded initialisation."""
    return build_model(induction_model_config(d_vocab, n_ctx, **overrides), seed=seed, device=device)


FACT_PRESETS: dict[str, dict] = {
    "small": {},
    "tiny": dict(d_model=32, n_heads=2, d_head=16, d_mlp=128),
}
"""Overrides of :func:`fact_model_config` by preset: ``"small"`` is the default model (the one packaged for the
tutorial), ``"tiny"`` trains in seconds (tests, the reversal benchmark)."""


def fact_model_config(d_vocab: int, n_ctx: int, **overrides) -> HookedTransformerConfig:
    """The fact-recall transformer (:mod:`mi_toolkit.tasks.facts`): 4 layers, d_model 128, 4 heads of 32, d_mlp 512,
    GELU, pre-LayerNorm and learned positions, as GPT-2 in miniature, except that the first two attention layers
    are local (GPT-Neo's local attention, window 2: a position sees itself and the one before).

    Local early layers keep the last position from reading the subject before layer 2, so the subject's own MLPs
    are where a fact can be looked up early, the regime ROME describes in GPT-2 (the last subject token binds the
    first name through its window). With global attention everywhere the model looked facts up at the last
    position instead (measured on a 3-layer, d_model 32 model: MLP indirect effect peak at layer 0, last position;
    the last position read the subject in layer 0 only), where a ROME edit at the subject cannot reach them.

    Args:
        d_vocab: vocabulary size (``KnowledgeBase.d_vocab``).
        n_ctx: context length (``KnowledgeBase.n_ctx``).
        **overrides: any ``HookedTransformerConfig`` field (:data:`FACT_PRESETS`).
    """
    fields = dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, act_fn="gelu", normalization_type="LN",
                  d_vocab=d_vocab, n_ctx=n_ctx, positional_embedding_type="standard",
                  attn_types=["local", "local", "global", "global"], window_size=2)
    fields.update(overrides)
    return HookedTransformerConfig(**fields)


def make_fact_model(
    d_vocab: int, n_ctx: int, *, seed: int = 0, device: str | torch.device = "cpu", **overrides
) -> HookedTransformer:
    """Build the (untrained) fact-recall model of :func:`fact_model_config` with a seeded initialisation."""
    return with_attn_types(build_model(fact_model_config(d_vocab, n_ctx, **overrides), seed=seed, device=device))


def with_attn_types(model: HookedTransformer) -> HookedTransformer:
    """Give each attention layer the type ``cfg.attn_types`` names (``"local"``: it sees the last ``window_size``
    positions only, as in GPT-Neo); TransformerLens 3's ``HookedTransformer`` leaves every layer global."""
    for block, attn_type in zip(model.blocks, model.cfg.attn_types or ()):
        block.attn.attn_type = attn_type
    return model


def ioi_model_config(d_vocab: int = 34, n_ctx: int = 12, **overrides) -> HookedTransformerConfig:
    """The symbolic-IOI model (:class:`mi_toolkit.tasks.IOITask`): 2 attention-only layers, 4 heads of 16, d_model
    64, LayerNorm, learned positions. It needs two layers: one to find the repeated name, one to copy the other
    (a single layer cannot tell which name occurs twice when the places vary). It solves the task (accuracy > 99%)
    within about 500 steps."""
    fields = dict(n_layers=2, d_model=64, n_heads=4, d_head=16, attn_only=True, normalization_type="LN",
                  d_vocab=d_vocab, n_ctx=n_ctx, positional_embedding_type="standard")
    fields.update(overrides)
    return HookedTransformerConfig(**fields)


OTHELLO_PRESETS: dict[str, dict] = {
    "small": dict(n_layers=4, d_model=128, n_heads=4, d_mlp=512),
    "tiny": dict(n_layers=2, d_model=32, n_heads=2, d_mlp=64),
}
"""Sizes of the Othello model by preset: ``"small"`` is the shipped 6x6 model (0.8M parameters), ``"tiny"`` trains
in seconds (tests)."""


def othello_model_config(d_vocab: int, n_ctx: int, *, n_layers: int = 4, d_model: int = 128, n_heads: int = 4,
                         d_mlp: int = 512, **overrides) -> HookedTransformerConfig:
    """An Othello-GPT (Li et al. 2023, scaled down): pre-LayerNorm, GELU MLPs, learned positions, no BOS; one token
    per playable square plus the padding token."""
    fields = dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, d_mlp=d_mlp,
                  act_fn="gelu", normalization_type="LN", d_vocab=d_vocab, n_ctx=n_ctx,
                  positional_embedding_type="standard")
    fields.update(overrides)
    return HookedTransformerConfig(**fields)
