"""Ablation hooks against independent computations: edited weights, manual hooks, projections."""

import pytest
import torch

from mi_toolkit import ablation
from mi_toolkit.core import get_act_name, has_hooks

D_VOCAB = 20  # the tiny transformers' vocabulary (conftest.py)
MODEL = dict(seed=2, act_fn="relu", normalization_type="LN", d_mlp=12)
"""conftest's tiny transformer (2 layers, d_model 16, 4 heads of 4, biases drawn from N(0, 0.1)) with these fields."""


@pytest.fixture(scope="module")
def model(make_tiny_transformer):
    return make_tiny_transformer(**MODEL)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, D_VOCAB, (4, 7), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference_tokens():
    return torch.randint(0, D_VOCAB, (6, 7), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def edited(make_tiny_transformer):
    def edit(model, **zeroed):
        """A copy of ``model`` with ``parameter_name=index`` entries set to zero."""
        copy = make_tiny_transformer(**MODEL)
        copy.load_state_dict(model.state_dict())
        params = dict(copy.named_parameters())
        with torch.no_grad():
            for name, index in zeroed.items():
                params[name.replace("__", ".")][index] = 0.0
        return copy

    return edit


def _run(model, tokens, hooks):
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return model(tokens)


def test_zero_ablated_heads_equal_zeroed_output_weights(model, tokens, edited):
    logits = _run(model, tokens, [(get_act_name("z", 1), ablation.ablate_heads([0, 2]))])
    expected = edited(model, blocks__1__attn__W_O=[0, 2])(tokens)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits, model(tokens), atol=1e-3)


def test_zero_ablated_mlp_layer_and_neurons_equal_zeroed_weights(model, tokens, edited):
    logits = _run(model, tokens, [(get_act_name("mlp_out", 0), ablation.ablate_layer())])
    expected = edited(model, blocks__0__mlp__W_out=slice(None), blocks__0__mlp__b_out=slice(None))(tokens)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    logits = _run(model, tokens, [(get_act_name("post", 1), ablation.ablate_neurons([3, 5, 7]))])
    expected = edited(model, blocks__1__mlp__W_out=[3, 5, 7])(tokens)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_mean_ablation_uses_per_position_reference_mean(model, tokens, reference_tokens):
    name = get_act_name("z", 0)
    _, ref_cache = model.run_with_cache(reference_tokens)
    reference = ref_cache[name]
    seen = {}

    def record(z, hook):
        seen["z"] = z.clone()

    _run(model, tokens, [(name, ablation.ablate_heads([1], "mean", reference)), (name, record)])
    z = seen["z"]
    manual_mean = sum(reference[i] for i in range(len(reference))) / len(reference)  # (pos, head, d_head)
    torch.testing.assert_close(z[:, :, 1], manual_mean[None, :, 1].expand(len(tokens), -1, -1))
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(z[:, :, 0], cache[name][:, :, 0])  # other heads untouched


def test_resample_ablation_takes_reference_rows_and_is_seeded(model, tokens, reference_tokens):
    name = get_act_name("post", 0)
    _, ref_cache = model.run_with_cache(reference_tokens)
    reference = ref_cache[name]
    seen = []

    def record(post, hook):
        seen.append(post.clone())

    for seed in (0, 0, 1):
        _run(model, tokens, [(name, ablation.ablate_neurons([2, 4], "resample", reference, seed=seed)), (name, record)])
    for row in seen[0][:, :, [2, 4]]:
        assert any(torch.equal(row, ref) for ref in reference[:, :, [2, 4]])
    torch.testing.assert_close(seen[0], seen[1])
    assert not torch.equal(seen[0], seen[2])


def test_subspace_ablation_is_a_projection(model, tokens, reference_tokens):
    name = get_act_name("resid_mid", 0)
    gen = torch.Generator().manual_seed(5)
    directions = torch.randn(16, 3, generator=gen)
    seen = []

    def record(x, hook):
        seen.append(x.clone())

    _, cache = model.run_with_cache(tokens)
    original = cache[name]
    _run(model, tokens, [(name, ablation.ablate_subspace(directions)), (name, record)])
    zeroed = seen[-1]
    # Nothing left in the span; the orthogonal complement unchanged (solve for the span's coefficients directly).
    coeffs = torch.linalg.lstsq(directions, zeroed.reshape(-1, 16).T).solution
    assert (directions @ coeffs).abs().max() < 1e-4
    removed = original - zeroed
    residual = removed.reshape(-1, 16).T - directions @ torch.linalg.lstsq(directions, removed.reshape(-1, 16).T).solution
    assert residual.abs().max() < 1e-4
    # An axis-aligned subspace zeroes those coordinates.
    _run(model, tokens, [(name, ablation.ablate_subspace(torch.eye(16)[:, :2])), (name, record)])
    expected = original.clone()
    expected[..., :2] = 0
    torch.testing.assert_close(seen[-1], expected)
    # Mean ablation of a subspace: the span's coordinates become the reference mean's.
    _, ref_cache = model.run_with_cache(reference_tokens)
    _run(model, tokens, [(name, ablation.ablate_subspace(torch.eye(16)[:, :2], "mean", ref_cache[name])), (name, record)])
    expected[..., :2] = ref_cache[name][..., :2].mean(0)
    torch.testing.assert_close(seen[-1], expected)


def test_ablation_effect_and_head_sweep(model, tokens, reference_tokens, edited):
    hooks = [(get_act_name("z", 1), ablation.ablate_heads([3]))]
    effect = ablation.ablation_effect(model, tokens, hooks)
    assert effect.baseline == pytest.approx(model(tokens, return_type="loss").item(), abs=1e-6)
    ablated_model = edited(model, blocks__1__attn__W_O=3)
    assert effect.ablated == pytest.approx(ablated_model(tokens, return_type="loss").item(), abs=1e-5)
    assert effect.effect == pytest.approx(effect.ablated - effect.baseline)
    for how in ("zero", "mean"):
        sweep = ablation.head_ablation_effects(model, tokens, how, reference_tokens)
        assert sweep.shape == (2, 4)
        _, ref_cache = model.run_with_cache(reference_tokens)
        reference = ref_cache[get_act_name("z", 1)] if how == "mean" else None
        single = ablation.ablation_effect(model, tokens, [(get_act_name("z", 1), ablation.ablate_heads([3], how, reference))])
        assert sweep[1, 3].item() == pytest.approx(single.effect, abs=1e-5)
    assert not has_hooks(model)


def test_errors_and_no_hooks_left(model, tokens):
    with pytest.raises(ValueError, match="needs `reference`"):
        ablation.ablate_heads([0], "mean")
    with pytest.raises(ValueError, match="unknown ablation"):
        ablation.ablate_layer("random")
    wrong = torch.zeros(3, 5, 4, 4)  # pos 5, the run has 7
    with pytest.raises(ValueError, match="does not match"):
        _run(model, tokens, [(get_act_name("z", 0), ablation.ablate_heads([0], "mean", wrong))])
    assert not has_hooks(model)

    def broken(logits):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        ablation.ablation_effect(model, tokens, [(get_act_name("z", 0), ablation.ablate_heads([0]))], broken)
    assert not has_hooks(model)
    with pytest.raises(RuntimeError, match="metric failed"):
        ablation.head_ablation_effects(model, tokens, metric=broken)
    assert not has_hooks(model)
