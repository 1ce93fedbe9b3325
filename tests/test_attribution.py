"""Direct logit attribution and logit lens against direct computations from the logits and weights."""

import pytest
import torch

from mi_toolkit import attribution

D_VOCAB = 20  # the tiny transformers' vocabulary (conftest.py)


def _fields(normalization: str | None, attn_only: bool = False) -> dict:
    """conftest's tiny transformer (2 layers, d_model 16, 4 heads of 4), seed 3, ReLU, every bias and LayerNorm
    weight shifted by 0.2 N(0, 1)."""
    return dict(seed=3, biases="shifted", act_fn="relu", normalization_type=normalization, attn_only=attn_only,
                d_mlp=None if attn_only else 12)


@pytest.fixture(scope="module", params=[None, "LN", "LNPre", "RMS"])
def run(request, make_tiny_transformer):
    model = make_tiny_transformer(**_fields(request.param))
    tokens = torch.randint(0, D_VOCAB, (3, 6), generator=torch.Generator().manual_seed(0))
    logits, cache = model.run_with_cache(tokens)
    correct, incorrect = tokens[:, 1], tokens[:, 2]
    return model, tokens, logits, cache, correct, incorrect


def _constant_term(model, correct, incorrect):
    """Logit-difference part that no component writes: final LN bias and unembedding bias."""
    direction = model.W_U[:, correct] - model.W_U[:, incorrect]  # (d_model, batch)
    bias = getattr(getattr(model, "ln_final", None), "b", None)
    from_ln = 0.0 if bias is None else (bias @ direction)
    return (from_ln + model.b_U[correct] - model.b_U[incorrect]).mean()


@pytest.mark.parametrize("pos", [-1, 3])
def test_layer_attribution_sums_to_logit_difference(run, pos):
    model, tokens, logits, cache, correct, incorrect = run
    result = attribution.layer_attribution(cache, correct, incorrect, positions=pos)
    rows = torch.arange(3)
    logit_diff = (logits[rows, pos, correct] - logits[rows, pos, incorrect]).mean()
    assert result.labels[:2] == ["embed", "pos_embed"] and result.labels[-1] == "1_mlp_out"
    torch.testing.assert_close(result.values.sum() + _constant_term(model, correct, incorrect), logit_diff,
                               atol=1e-4, rtol=1e-4)


def test_head_and_neuron_attribution_add_up_to_their_layers(run):
    model, tokens, logits, cache, correct, incorrect = run
    layers = attribution.layer_attribution(cache, correct, incorrect)
    heads = attribution.head_attribution(cache, correct, incorrect)
    neurons = attribution.neuron_attribution(cache, correct, incorrect)
    assert heads.shape == (2, 4) and neurons.shape == (2, 12)
    # The layer's output = sum of its heads (or neurons) + its output bias; attribute the bias by hand.
    scale = cache["ln_final.hook_scale"][:, -1] if "ln_final.hook_scale" in cache else torch.ones(3, 1)
    weight = getattr(getattr(model, "ln_final", None), "w", torch.ones(16))
    direction = (model.W_U[:, correct] - model.W_U[:, incorrect]).T * weight  # (batch, d_model)
    centre = model.cfg.normalization_type in ("LN", "LNPre")
    for layer in range(2):
        for label, parts, bias in ((f"{layer}_attn_out", heads[layer], model.blocks[layer].attn.b_O),
                                   (f"{layer}_mlp_out", neurons[layer], model.blocks[layer].mlp.b_out)):
            bias = bias - bias.mean() if centre else bias
            bias_attr = ((bias / scale) * direction).sum(-1).mean()
            torch.testing.assert_close(parts.sum() + bias_attr, layers.values[layers.labels.index(label)],
                                       atol=1e-4, rtol=1e-4)


def test_head_attribution_matches_manual_computation(run):
    model, tokens, logits, cache, correct, incorrect = run
    heads = attribution.head_attribution(cache, correct, 5)
    z = cache["z", 1][:, -1]  # (batch, head, d_head)
    out = torch.einsum("bhd,hdm->bhm", z, model.blocks[1].attn.W_O)  # (batch, head, d_model)
    if model.cfg.normalization_type in ("LN", "LNPre"):
        out = out - out.mean(-1, keepdim=True)
    if "ln_final.hook_scale" in cache:
        out = out / cache["ln_final.hook_scale"][:, -1, None]
    weight = getattr(getattr(model, "ln_final", None), "w", torch.ones(16))
    direction = (model.W_U[:, correct] - model.W_U[:, 5, None]).T * weight  # (batch, d_model)
    expected = (out * direction[:, None]).sum(-1).mean(0)
    torch.testing.assert_close(heads[1], expected, atol=1e-5, rtol=1e-5)


def test_logit_lens(run):
    model, tokens, logits, cache, correct, incorrect = run
    lens = attribution.logit_lens(cache)
    assert lens.labels == ["0_pre", "1_pre", "final_post"]
    torch.testing.assert_close(lens.logits[-1], logits, atol=1e-5, rtol=1e-5)
    resid = cache["resid_pre", 1]
    ln_final = getattr(model, "ln_final", torch.nn.Identity())
    expected = model.unembed(ln_final(resid))  # final LayerNorm with this stream's own statistics
    torch.testing.assert_close(lens.logits[1], expected, atol=1e-5, rtol=1e-5)
    log_probs = lens.next_token_log_probs(tokens)
    expected = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(log_probs[-1], expected, atol=1e-5, rtol=1e-5)


def test_neuron_attribution_needs_mlps(make_tiny_transformer):
    model = make_tiny_transformer(**_fields(None, attn_only=True))
    _, cache = model.run_with_cache(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="no neurons"):
        attribution.neuron_attribution(cache, 1)
