"""Steering hooks (SAE splices, feature edits, added directions) against the edits computed by hand."""

import pytest
import torch

from mi_toolkit import SAE, SAEConfig, add_direction, clamp_feature, scale_feature, splice_sae
from mi_toolkit.core import has_hooks
from mi_toolkit.interventions import ablate

HOOK = "blocks.0.hook_resid_mid"


@pytest.fixture(scope="module")
def setup(tiny_grokking_model):
    model = tiny_grokking_model  # p = 11, d_model 16, 4 heads of 4, d_mlp 32, seed 0
    tokens = torch.randint(0, 12, (20, 3), generator=torch.Generator().manual_seed(0))
    sae = SAE(SAEConfig(d_in=16, d_sae=40, seed=1))
    with torch.no_grad():
        sae.b_enc.fill_(0.1)  # so that features fire on these random activations
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    return model, tokens, sae, cache[HOOK]


def _edited(model, tokens, hooks):
    """The activation at HOOK after ``hooks`` ran (captured by a hook listed last)."""
    seen = []
    with torch.no_grad(), model.hooks(fwd_hooks=[(HOOK, h) for h in hooks] + [(HOOK, lambda a, hook: seen.append(a))]):
        logits = model(tokens)
    return seen[0], logits


def test_clamp_feature_sets_its_contribution(setup):
    model, tokens, sae, clean = setup
    feature = int(sae.encode(clean).gt(0).sum((0, 1)).argmax())
    edited, _ = _edited(model, tokens, [clamp_feature(sae, feature, 5.0, positions=-1)])
    with torch.no_grad():
        f = sae.encode(clean[:, -1])[:, feature]
        expected_last = clean[:, -1] + (5.0 - f)[:, None] * sae.W_dec[feature]
    torch.testing.assert_close(edited[:, -1], expected_last)
    torch.testing.assert_close(edited[:, :-1], clean[:, :-1], rtol=0, atol=0)  # other positions untouched
    assert not torch.allclose(edited[:, -1], clean[:, -1])


def test_scale_feature(setup):
    model, tokens, sae, clean = setup
    feature = int(sae.encode(clean).gt(0).sum((0, 1)).argmax())
    same, _ = _edited(model, tokens, [scale_feature(sae, feature, 1.0)])
    torch.testing.assert_close(same, clean)
    off, _ = _edited(model, tokens, [scale_feature(sae, feature, 0.0)])
    with torch.no_grad():
        f = sae.encode(clean)[..., feature]
    torch.testing.assert_close(off, clean - f[..., None] * sae.W_dec[feature])
    # Switching the feature off is clamping it to 0.
    clamped, _ = _edited(model, tokens, [clamp_feature(sae, feature, 0.0)])
    torch.testing.assert_close(off, clamped)


def test_add_direction_and_composition(setup):
    model, tokens, _, clean = setup
    direction = torch.randn(16, generator=torch.Generator().manual_seed(3))
    edited, steered_logits = _edited(model, tokens, [add_direction(direction, 2.0, positions=slice(1, None))])
    torch.testing.assert_close(edited[:, 0], clean[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(edited[:, 1:], clean[:, 1:] + 2.0 * direction)
    # Hooks compose in order: +d then -d is the clean model; after the context the model is clean again.
    _, logits = _edited(model, tokens, [add_direction(direction, 2.0), add_direction(direction, -2.0)])
    with torch.no_grad():
        plain = model(tokens)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(steered_logits, plain)
    # ...and with the ablation hooks: zero the activation, then add d, leaves exactly d.
    composed, _ = _edited(model, tokens, [ablate((), "zero"), add_direction(direction, 1.0)])
    torch.testing.assert_close(composed, direction.expand_as(composed))


def test_hooks_work_with_run_with_hooks(setup):
    model, tokens, sae, _ = setup
    with torch.no_grad():
        via_context = _edited(model, tokens, [splice_sae(sae, positions=-1)])[1]
        via_run = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, splice_sae(sae, positions=-1))])
    torch.testing.assert_close(via_context, via_run)
    assert not has_hooks(model)


def test_steering_errors(setup):
    model, tokens, sae, _ = setup
    with pytest.raises(ValueError, match="feature must be in"):
        clamp_feature(sae, 40, 1.0)
    with pytest.raises(ValueError, match="direction has 7 entries"):
        model.run_with_hooks(tokens, fwd_hooks=[(HOOK, add_direction(torch.ones(7)))])
