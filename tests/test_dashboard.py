"""Feature dashboards: the numbers against a brute-force computation from the cache, and the page they make."""

import re

import pytest
import torch

import mi_toolkit as mt
from mi_toolkit import SAE, SAEConfig
from mi_toolkit.analysis.dashboard import feature_dashboard_data

HOOK = "blocks.0.mlp.hook_post"  # tiny_mlp_ln_model: d_mlp 8, d_model 16, d_vocab 20, LayerNorm, n_ctx 10


def random_sae(d_in: int, d_sae: int = 12, seed: int = 0) -> SAE:
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, seed=seed))
    with torch.no_grad():  # biases spread the features' firing rates
        sae.b_enc.copy_(torch.linspace(-0.3, 0.1, d_sae))
        sae.b_dec.normal_(0, 0.05, generator=torch.Generator().manual_seed(seed))
    return sae


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 20, (12, 10), generator=torch.Generator().manual_seed(3))


def test_dashboard_numbers_match_brute_force(tiny_mlp_ln_model, tokens):
    model, sae, features = tiny_mlp_ln_model, random_sae(8), [3, 0, 11]
    data = feature_dashboard_data(sae, model, tokens, features, hook_name=HOOK, k=4, window=(3, 2), n_bins=5,
                                  n_logits=3, n_neurons=2)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        f = sae.encode(cache[HOOK])[..., features]  # (batch, pos, n_features)
    flat = f.reshape(-1, 3)
    torch.testing.assert_close(data.max_activation, flat.max(0).values)
    torch.testing.assert_close(data.density, (flat > 0).float().mean(0))
    assert data.n_tokens == 120 and data.token_strings[5] == "5"  # no tokenizer: token ids
    for i in range(3):
        torch.testing.assert_close(data.context_values[i], flat[:, i].topk(4).values.clamp_min(0))
        assert data.histogram_counts[i].sum() == (flat[:, i] > 0).sum()
        for j in range(4):
            s, p = data.context_sequence[i, j].item(), data.context_position[i, j].item()
            if data.context_values[i, j] == 0:
                continue
            assert f[s, p, i] == data.context_values[i, j]
            for w, offset in enumerate(range(-3, 3)):  # the window: 3 before the maximum, 2 after
                if 0 <= p + offset < 10:
                    assert data.context_tokens[i, j, w] == tokens[s, p + offset]
                    assert data.context_activations[i, j, w] == f[s, p + offset, i]
                else:
                    assert data.context_tokens[i, j, w] == -1 and data.context_activations[i, j, w] == 0
    # Logit effects: the decoder rows through W_out, the final LayerNorm (centred, its weight) and W_U.
    resid = sae.W_dec[features].detach() @ model.blocks[0].mlp.W_out
    effects = ((resid - resid.mean(-1, keepdim=True)) * model.ln_final.w) @ model.W_U
    torch.testing.assert_close(data.logit_top_values, effects.topk(3).values)
    torch.testing.assert_close(data.logit_bottom_values, effects.topk(3, largest=False).values)
    assert torch.equal(data.logit_top_tokens, effects.topk(3).indices)
    # Neuron alignment: the largest |W_dec| entries and the top neuron's share of the squared norm.
    w = sae.W_dec[features].detach()
    assert torch.equal(data.neuron_indices, w.abs().topk(2).indices)
    torch.testing.assert_close(data.top_neuron_fraction, w.pow(2).max(-1).values / w.pow(2).sum(-1))


def test_residual_and_pathless_hooks(tiny_mlp_ln_model, tokens, monkeypatch):
    model = tiny_mlp_ln_model
    sae = random_sae(16, seed=1)
    data = feature_dashboard_data(sae, model, tokens, [0, 1], hook_name="blocks.1.hook_resid_post", n_logits=4)
    v = sae.W_dec[:2].detach()
    effects = ((v - v.mean(-1, keepdim=True)) * model.ln_final.w) @ model.W_U  # direct: W_dec @ W_U
    torch.testing.assert_close(data.logit_top_values, effects.topk(4).values)
    assert data.neuron_indices is None and "W_dec @ W_U" in data.logit_note
    data = feature_dashboard_data(sae, model, tokens, [0], hook_name="blocks.0.attn.hook_q")
    assert data.logit_top_tokens is None and "no linear path" in data.logit_note
    # A model with a tokenizer shows its token strings; a decode function overrides it.
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    word_level = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(20)}, unk_token="w0"))
    monkeypatch.setattr(model, "tokenizer", PreTrainedTokenizerFast(tokenizer_object=word_level))
    data = feature_dashboard_data(sae, model, tokens, [0], hook_name="blocks.1.hook_resid_post")
    assert set(data.token_strings.values()) <= {f"w{i}" for i in range(20)} and data.token_strings
    data = feature_dashboard_data(sae, model, tokens, [0], hook_name="blocks.1.hook_resid_post",
                                  decode=lambda t: f"<t{t}>")
    assert all(text == f"<t{t}>" for t, text in data.token_strings.items())


def test_dashboard_page_is_one_self_contained_file(tiny_mlp_ln_model, tokens, tmp_path):
    sae = random_sae(8)
    path = mt.feature_dashboard(sae, tiny_mlp_ln_model, tokens, range(12), hook_name=HOOK, out=tmp_path / "d.html",
                                decode=lambda t: "<b>" if t == 4 else f"tok{t}")
    page = path.read_text()
    assert page.count("* plotly.js v") == 1  # the library inlined once, not per figure
    assert page.count("Plotly.newPlot") == 12 and "<script src" not in page
    for feature in range(12):
        assert f"id='f{feature}'" in page and f"Feature {feature}</h2>" in page
    body = page.split("<body>")[1]
    assert "&lt;b&gt;" in body and "<b>" not in body  # token text is escaped
    assert "Neuron alignment" in page and "promotes" in page
    assert re.search(r"background:rgba\(255,120,0,1\.00\)", page)  # each feature's maximum fully highlighted


def test_dashboard_bad_input(tiny_mlp_ln_model, tokens):
    with pytest.raises(ValueError, match=r"hook 'blocks.0.hook_resid_post' has activations of size 16, the SAE "
                                         r"reads 8"):
        feature_dashboard_data(random_sae(8), tiny_mlp_ln_model, tokens, [0], hook_name="blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match=r"features must be .* in \[0, 12\)"):
        feature_dashboard_data(random_sae(8), tiny_mlp_ln_model, tokens, [12], hook_name=HOOK)
    with pytest.raises(ValueError, match="no hook point"):
        feature_dashboard_data(random_sae(8), tiny_mlp_ln_model, tokens, [0], hook_name="blocks.0.mlp.hook_pots")
