"""The last-position fast forward pass (``mt.core.forward``) against TransformerLens's full forward pass, and the
architecture table (``mt.core.architectures``) that decides when it runs."""

import pytest
import torch

import mi_toolkit as mt
from mi_toolkit import build_model, make_grokking_model
from mi_toolkit.core import get_act_name
from mi_toolkit.core.architectures import unmet_requirements
from mi_toolkit.core.forward import final_position_forward, final_position_logits, supports_fast_path

CONFIGS = {
    "grokking (lookup path)": (dict(), 200),
    "1 layer LN gelu, small batch": (dict(n_layers=1, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=40,
                                          n_ctx=6, act_fn="gelu", normalization_type="LN"), 5),
    "2 layers LNPre": (dict(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=40, n_ctx=6,
                            act_fn="relu", normalization_type="LNPre"), 64),
    "attention only": (dict(n_layers=2, d_model=32, d_head=8, n_heads=4, d_vocab=40, n_ctx=6, attn_only=True,
                            normalization_type="LN"), 64),
}


def _model_and_tokens(name, device):
    fields, batch = CONFIGS[name]
    if not fields:
        model = make_grokking_model(23, d_model=32, d_head=8, d_mlp=64, freeze_biases=False, device=device)
        a, b = torch.randint(0, 23, (2, batch))
        return model, torch.stack([a, b, torch.full_like(a, 23)], 1).to(device)
    model = build_model(fields, seed=1, device=device)
    for p in model.parameters():  # non-zero biases so that every term is checked
        p.data += 0.05 * torch.randn_like(p)
    return model, torch.randint(0, fields["d_vocab"], (batch, fields["n_ctx"]), device=device)


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_and_gradients_match_full_forward(name, device):
    model, tokens = _model_and_tokens(name, device)
    assert supports_fast_path(model)
    full = model(tokens)[:, -1]
    fast = final_position_logits(model, tokens)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    grads = []
    for out in (full, fast):
        model.zero_grad()
        out.pow(2).mean().backward(retain_graph=True)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-4, msg=n)


def test_mlp_post_matches_cache(device):
    model, tokens = _model_and_tokens("grokking (lookup path)", device)
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(final_position_forward(model, tokens).mlp_post, cache[get_act_name("post", 0)][:, -1])


def test_hooked_model_takes_the_full_path(device):
    model, tokens = _model_and_tokens("2 layers LNPre", device)
    seen = []
    with model.hooks(fwd_hooks=[(get_act_name("pattern", 1), lambda x, hook: seen.append(x.shape))]):
        assert not supports_fast_path(model)
        assert unmet_requirements(model, "final_position") == ["no hooks attached"]
        final_position_logits(model, tokens)
    assert seen and supports_fast_path(model)
    assert unmet_requirements(model, "final_position") == []


def test_unsupported_architecture_falls_back(device):
    model = build_model(dict(n_layers=1, d_model=16, d_head=4, n_heads=4, d_mlp=32, d_vocab=10, n_ctx=5,
                             act_fn="relu", positional_embedding_type="rotary"), device=device)
    tokens = torch.randint(0, 10, (3, 5), device=device)
    assert not supports_fast_path(model)
    assert unmet_requirements(model, "final_position") == ["standard positions"]
    torch.testing.assert_close(final_position_logits(model, tokens), model(tokens)[:, -1])
    with pytest.raises(ValueError, match="does not cover"):
        final_position_forward(model, tokens)


def test_plain_pytorch_hooks_switch_the_fast_paths_off(make_tiny_transformer):
    """A PyTorch hook or pre-hook on any module (not only TransformerLens's hook points) would be skipped or called
    on part of the batch by a fast path, so it counts as a hook attached."""
    model = make_tiny_transformer(seed=1, d_mlp=8, normalization_type="LN")
    assert mt.core.supports(model, "final_restart") and mt.core.supports(model, "final_position")
    for register in (model.blocks[1].register_forward_pre_hook, model.blocks[1].mlp.register_forward_hook,
                     model.unembed.register_full_backward_hook):
        handle = register(lambda *args: None)
        assert mt.core.has_hooks(model) and not mt.core.supports(model, "final_restart")
        assert not mt.core.supports(model, "final_position")
        handle.remove()
    assert not mt.core.has_hooks(model)


def test_architecture_table(tiny_induction_model):
    # Rotary attention-only: the patching paths apply, the final-position path (learned positions only) does not.
    model = tiny_induction_model
    assert set(mt.core.FAST_PATHS) == {"final_position", "kv_restart", "attention_update", "final_restart"}
    assert mt.core.supports(model, "kv_restart") and mt.core.supports(model, "attention_update", 1)
    assert mt.core.supports(model, "final_restart")
    assert not mt.core.supports(model, "final_position")
    assert mt.core.architectures.is_causal(model)
    tokens = mt.tasks.repeated_tokens(2, 5, 12)
    torch.testing.assert_close(final_position_logits(model, tokens), model(tokens)[:, -1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown fast path"):
        unmet_requirements(model, "everything")
