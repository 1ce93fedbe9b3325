"""Activation and attribution patching: parity with TransformerLens, exactness where linear, errors, no leaked hooks."""

import numpy as np
import pytest
import torch
import transformer_lens.patching as tlp

import mi_toolkit as mt
from mi_toolkit import metrics, patching
from mi_toolkit.core import get_act_name, has_hooks

D_VOCAB = 20  # the tiny transformers' vocabulary (conftest.py)

TL_FUNCTIONS = {
    "resid_pre": tlp.get_act_patch_resid_pre,
    "resid_mid": tlp.get_act_patch_resid_mid,
    "attn_out": tlp.get_act_patch_attn_out,
    "mlp_out": tlp.get_act_patch_mlp_out,
    "head_out": tlp.get_act_patch_attn_head_out_by_pos,
    "q": tlp.get_act_patch_attn_head_q_by_pos,
    "k": tlp.get_act_patch_attn_head_k_by_pos,
    "v": tlp.get_act_patch_attn_head_v_by_pos,
    "head_out_all_pos": tlp.get_act_patch_attn_head_out_all_pos,
    "q_all_pos": tlp.get_act_patch_attn_head_q_all_pos,
    "k_all_pos": tlp.get_act_patch_attn_head_k_all_pos,
    "v_all_pos": tlp.get_act_patch_attn_head_v_all_pos,
    "pattern_all_pos": tlp.get_act_patch_attn_head_pattern_all_pos,
}
MLP_ONLY = {"resid_mid", "mlp_out", "neuron", "neuron_all_pos"}


MODELS = {
    # Fields of conftest's tiny transformer (2 layers, d_model 16, 4 heads of 4, biases drawn from N(0, 0.1)), seed 1,
    # GELU; "mlp_ln" is conftest's tiny_mlp_ln_model.
    "attn_only_ln": dict(attn_only=True, normalization_type="LN"),
    "mlp_no_ln": dict(d_mlp=8, normalization_type=None),
    "attn_only_no_ln": dict(attn_only=True, normalization_type=None),
    # restarts with rotary offsets
    "rotary_attn_only": dict(attn_only=True, normalization_type="LN", positional_embedding_type="rotary"),
    # full forward passes
    "shortformer_mlp": dict(d_mlp=8, normalization_type="LN", positional_embedding_type="shortformer"),
    "rotary_parallel_mlp": dict(d_mlp=8, normalization_type="LN", positional_embedding_type="rotary",
                                parallel_attn_mlp=True),
    # restarts after layer 1
    "three_layer_rotary_mlp": dict(d_mlp=8, normalization_type="RMS", positional_embedding_type="rotary", n_layers=3),
}


@pytest.fixture(scope="module")
def models(make_tiny_transformer, tiny_mlp_ln_model):
    built = {name: make_tiny_transformer(seed=1, act_fn="gelu", **fields) for name, fields in MODELS.items()}
    return {"mlp_ln": tiny_mlp_ln_model, **built}


@pytest.fixture(scope="module")
def tokens(tiny_tokens):
    return tiny_tokens


def _logit_diff(clean, corrupted):
    return metrics.logit_diff(clean[:, -1], corrupted[:, -1])


def _undeclared(metric):
    """The same metric without the positions it declares: activation_patch then runs every patch."""
    return lambda logits: metric(logits)


PARITY_CASES = [(m, t) for m in ("mlp_ln", "attn_only_ln") for t in TL_FUNCTIONS] + [
    (m, t) for m in ("rotary_attn_only", "shortformer_mlp") for t in ("resid_pre", "head_out", "k", "pattern_all_pos")
]


@pytest.mark.parametrize("model_name,target", PARITY_CASES)
def test_activation_patch_matches_transformer_lens(models, tokens, model_name, target):
    model = models[model_name]
    clean, corrupted = tokens
    metric = _logit_diff(clean, corrupted)
    if model.cfg.attn_only and target in MLP_ONLY:
        with pytest.raises(ValueError, match="valid targets"):
            patching.activation_patch(model, clean, corrupted, metric, target)
        return
    _, clean_cache = model.run_with_cache(clean)
    theirs = TL_FUNCTIONS[target](model, corrupted, clean_cache, metric)
    assert theirs.std() > 0  # the comparison is not between two constant tensors
    # The metric reads the last position and says so; without saying so, every patch runs.
    for metric_ in (metric, _undeclared(metric)):
        for chunk_size in (None, 5):  # all patches in one pass; chunks that straddle layers
            ours = patching.activation_patch(model, clean, corrupted, metric_, target, chunk_size=chunk_size)
            assert ours.shape == theirs.shape
            assert (ours - theirs).abs().max().item() <= 1e-5


def _manual_patch(model, clean, corrupted, metric, act, index_fn, n_index):
    """Independent loop: one forward per (layer, index), slice written by ``index_fn(index)``."""
    _, cache = model.run_with_cache(clean)
    out = torch.zeros(model.cfg.n_layers, n_index)
    for layer in range(model.cfg.n_layers):
        name = get_act_name(act, layer)
        for i in range(n_index):
            where = index_fn(i)

            def hook(x, hook, where=where):
                x = x.clone()
                x[where] = cache[name][where]
                return x

            out[layer, i] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])).item()
    return out


def test_targets_without_tl_function_match_manual_loop(models, tokens):
    model = models["mlp_ln"]
    clean, corrupted = tokens
    metric = _logit_diff(clean, corrupted)
    n_pos, d_mlp = clean.shape[1], model.cfg.d_mlp
    neuron = _manual_patch(model, clean, corrupted, metric, "post",
                           lambda i: (slice(None), i // d_mlp, i % d_mlp), n_pos * d_mlp)
    ours = patching.activation_patch(model, clean, corrupted, metric, "neuron", chunk_size=7)
    torch.testing.assert_close(ours, neuron.view(2, n_pos, d_mlp), atol=1e-5, rtol=0)
    neuron_all = _manual_patch(model, clean, corrupted, metric, "post", lambda i: (slice(None), slice(None), i), d_mlp)
    ours = patching.activation_patch(model, clean, corrupted, metric, "neuron_all_pos")
    torch.testing.assert_close(ours, neuron_all, atol=1e-5, rtol=0)
    resid_post = _manual_patch(model, clean, corrupted, metric, "resid_post", lambda i: (slice(None), i), n_pos)
    ours = patching.activation_patch(model, clean, corrupted, metric, "resid_post")
    torch.testing.assert_close(ours, resid_post, atol=1e-5, rtol=0)


LOCAL_CASES = [(m, t) for m in ("mlp_ln", "shortformer_mlp") for t in ("head_out", "attn_out", "mlp_out", "resid_mid",
                                                                       "neuron", "resid_post")]
LOCAL_CASES += [("rotary_attn_only", t) for t in ("head_out", "attn_out", "resid_post")]
LOCAL_CASES += [("rotary_parallel_mlp", t) for t in ("head_out", "attn_out", "mlp_out", "neuron", "resid_post")]
LOCAL_CASES += [("three_layer_rotary_mlp", t) for t in ("head_out", "mlp_out", "resid_post")]


def test_next_layer_update_covers_the_test_models(models):
    # The position-local cases above run the next layer through the attention_update fast path on these models (and
    # through TL's restart on the shortformer model), so they test both paths.
    for name in ("mlp_ln", "rotary_attn_only", "rotary_parallel_mlp", "three_layer_rotary_mlp"):
        assert mt.core.architectures.supports(models[name], "attention_update", 1), name
    assert not mt.core.architectures.supports(models["shortformer_mlp"], "attention_update", 1)


@pytest.mark.parametrize("model_name,target", LOCAL_CASES)
def test_position_local_targets_match_manual_loop_at_every_position(models, tokens, model_name, target):
    # Position-local patches recompute one position of their layer; a metric that reads every position's logits
    # checks that the others are right too.
    model = models[model_name]
    clean, corrupted = tokens
    metric = metrics.loss(clean)
    act = patching.TARGETS[target].act
    shape = model.run_with_cache(clean, names_filter=get_act_name(act, 0))[1][get_act_name(act, 0)].shape[1:]
    n_pos, width = shape[0], (shape[1] if act in ("z", "post") else 1)
    if act in ("z", "post"):  # one head or neuron at one position
        expected = _manual_patch(model, clean, corrupted, metric, act, lambda i: (slice(None), i // width, i % width),
                                 n_pos * width)
    else:  # one position
        expected = _manual_patch(model, clean, corrupted, metric, act, lambda i: (slice(None), i), n_pos)
    for metric_, chunk_size in ((metric, None), (_undeclared(metric), None), (_undeclared(metric), 3)):
        ours = patching.activation_patch(model, clean, corrupted, metric_, target, chunk_size=chunk_size)
        torch.testing.assert_close(ours.reshape(expected.shape), expected, atol=1e-5, rtol=0)


def test_layers_subset_and_progress(models, tokens):
    model = models["mlp_ln"]
    metric = _logit_diff(*tokens)
    full = patching.activation_patch(model, *tokens, metric, "head_out")
    only_last = patching.activation_patch(model, *tokens, metric, "head_out", layers=[1], progress=True)
    assert only_last.shape == (1, *full.shape[1:])
    torch.testing.assert_close(only_last[0], full[1], atol=1e-6, rtol=0)


def test_patching_the_clean_run_everywhere_recovers_clean_metric(models, tokens):
    # Patching resid_pre of layer 0 at every position at once == running the clean input.
    model = models["mlp_ln"]
    clean, corrupted = tokens
    metric = _logit_diff(clean, corrupted)
    clean_value = metric(model(clean)).item()
    result = patching.activation_patch(model, clean, clean, metric, "head_out_all_pos")
    torch.testing.assert_close(result, torch.full_like(result, clean_value), atol=1e-5, rtol=0)


LINEAR_TARGETS = {
    # The logit difference is linear in these activations of the last layer when nothing nonlinear follows.
    "mlp_no_ln": ["resid_post", "mlp_out", "neuron", "neuron_all_pos"],
    "attn_only_no_ln": ["resid_post", "attn_out", "head_out", "head_out_all_pos", "v", "v_all_pos"],
}


@pytest.mark.parametrize("model_name,target", [(m, t) for m, ts in LINEAR_TARGETS.items() for t in ts])
def test_attribution_exact_where_linear(models, tokens, model_name, target):
    model = models[model_name]
    clean, corrupted = tokens
    metric = _logit_diff(clean, corrupted)
    last = [model.cfg.n_layers - 1]
    activation = patching.activation_patch(model, clean, corrupted, metric, target, layers=last)
    attribution = patching.attribution_patch(model, clean, corrupted, metric, target, layers=last)
    assert activation.std() > 1e-3
    torch.testing.assert_close(attribution, activation, atol=1e-4, rtol=1e-4)


def test_attribution_is_only_approximate_where_nonlinear(models, tokens):
    # Control for the test above: through attention and LayerNorm the first-order estimate is not exact.
    model = models["mlp_ln"]
    metric = _logit_diff(*tokens)
    activation = patching.activation_patch(model, *tokens, metric, "resid_pre", layers=[0])
    attribution = patching.attribution_patch(model, *tokens, metric, "resid_pre", layers=[0])
    assert (activation - attribution).abs().max() > 1e-2


def test_attribution_gradients_match_autograd_on_hooked_activation(models, tokens):
    # Independent first-order estimate for head_out: gradient via TL backward hooks.
    model = models["mlp_ln"]
    clean, corrupted = tokens
    metric = _logit_diff(clean, corrupted)
    _, clean_cache = model.run_with_cache(clean)
    grads, acts = {}, {}
    names = [get_act_name("z", layer) for layer in range(2)]

    def save_grad(grad, hook):
        grads[hook.name] = grad

    def save_act(act, hook):
        acts[hook.name] = act.detach()

    with model.hooks(fwd_hooks=[(n, save_act) for n in names], bwd_hooks=[(n, save_grad) for n in names]):
        value = metric(model(corrupted))
        value.backward()
    model.zero_grad(set_to_none=True)
    expected = torch.stack([
        value.detach() + (grads[n] * (clean_cache[n] - acts[n])).sum(dim=(0, 3)) for n in names
    ])
    ours = patching.attribution_patch(model, clean, corrupted, metric, "head_out")
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_attribution_every_matches_single_targets_and_leaves_no_grads(models, tokens):
    model = models["mlp_ln"]
    metric = _logit_diff(*tokens)
    every = patching.attribution_patch_every(model, *tokens, metric)
    assert set(every) == set(patching.valid_targets(model))
    for target in ["head_out", "neuron", "pattern_all_pos", "resid_mid"]:
        torch.testing.assert_close(every[target], patching.attribution_patch(model, *tokens, metric, target))
    assert all(p.grad is None for p in model.parameters())


def test_attribution_with_frozen_parameters(make_tiny_transformer, tokens):
    model = make_tiny_transformer(seed=1, act_fn="gelu", **MODELS["attn_only_no_ln"])  # its own: frozen below
    for p in model.parameters():
        p.requires_grad_(False)
    metric = _logit_diff(*tokens)
    estimate = patching.attribution_patch(model, *tokens, metric, "head_out", layers=[1])
    activation = patching.activation_patch(model, *tokens, metric, "head_out", layers=[1])
    torch.testing.assert_close(estimate, activation, atol=1e-4, rtol=1e-4)


def test_compare_patching_against_numpy():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 5, 4, generator=gen), torch.randn(2, 5, 4, generator=gen)
    result = patching.compare_patching(a, b)
    assert result.correlation == pytest.approx(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1], abs=1e-6)
    assert result.max_abs_error == pytest.approx((a - b).abs().max().item(), abs=1e-6)
    assert patching.compare_patching(a, 2 * a + 1).correlation == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        patching.compare_patching(a, b[:1])


# --- errors before any heavy work ---


@pytest.mark.parametrize("fn", [patching.activation_patch, patching.attribution_patch])
def test_clear_errors(models, tokens, fn):
    model = models["mlp_ln"]
    clean, corrupted = tokens
    metric = _logit_diff(clean, corrupted)
    with pytest.raises(ValueError, match="same shape"):
        fn(model, clean, corrupted[:, :-1], metric, "head_out")
    with pytest.raises(ValueError, match="same shape"):
        fn(model, clean, corrupted[:2], metric, "head_out")
    with pytest.raises(ValueError, match="valid targets: .*head_out"):
        fn(model, clean, corrupted, metric, "heads")
    with pytest.raises(ValueError, match="layers"):
        fn(model, clean, corrupted, metric, "head_out", layers=[2])
    with pytest.raises(ValueError, match="layers"):
        fn(model, clean, corrupted, metric, "head_out", layers=[-1])
    bad = clean.clone()
    bad[0, 0] = D_VOCAB
    with pytest.raises(ValueError, match="vocabulary"):
        fn(model, bad, corrupted, metric, "head_out")
    bad[0, 0] = -1
    with pytest.raises(ValueError, match="vocabulary"):
        fn(model, clean, bad, metric, "head_out")
    with pytest.raises(ValueError, match="valid targets"):
        fn(models["attn_only_ln"], clean, corrupted, metric, "mlp_out")


def _raising_metric(logits):
    raise RuntimeError("metric failed")


@pytest.mark.parametrize("fn", [patching.activation_patch, patching.attribution_patch])
def test_no_hooks_left_when_metric_raises(models, tokens, fn):
    model = models["mlp_ln"]
    with pytest.raises(RuntimeError, match="metric failed"):
        fn(model, *tokens, _raising_metric, "head_out")
    assert not has_hooks(model)


@pytest.mark.parametrize("fn", [patching.activation_patch, patching.attribution_patch])
def test_no_hooks_left_when_model_raises(make_tiny_transformer, tokens, fn, monkeypatch):
    model = make_tiny_transformer(seed=1, act_fn="gelu", normalization_type="LN", d_mlp=8)  # its own: broken below

    def broken_unembed(*args, **kwargs):
        raise RuntimeError("model failed")

    # Only the corrupted (patched) run fails: the clean cache is taken first, before this breaks.
    monkeypatch.setattr(model.unembed, "forward", broken_unembed)
    with pytest.raises(RuntimeError, match="model failed"):
        fn(model, *tokens, _logit_diff(*tokens), "head_out")
    assert not has_hooks(model)


def test_declared_positions_are_checked(models, tokens):
    model = models["mlp_ln"]
    bad = metrics.reads(7)(lambda logits: logits[:, -1].sum())
    with pytest.raises(ValueError, match="outside a sequence"):
        patching.activation_patch(model, *tokens, bad, "head_out")
    assert not has_hooks(model)


def test_float64_model_with_skipped_patches(tokens):
    model = mt.build_model(dict(n_layers=2, d_model=16, d_head=4, n_heads=4, d_vocab=D_VOCAB, n_ctx=10, act_fn="gelu",
                                normalization_type="LN", d_mlp=8, dtype=torch.float64), seed=2).eval()
    clean, corrupted = tokens
    metric = _logit_diff(clean, corrupted)
    _, clean_cache = model.run_with_cache(clean)
    theirs = tlp.get_act_patch_attn_head_out_by_pos(model, corrupted, clean_cache, metric)
    ours = patching.activation_patch(model, clean, corrupted, metric, "head_out")
    assert (ours.double() - theirs.double()).abs().max().item() <= 1e-5


def test_hooks_already_attached_are_applied(models, tokens):
    # The shortcuts that skip TL's attention would skip a user's hooks on it: with hooks attached, TL's path runs.
    model = models["mlp_ln"]
    clean, corrupted = tokens
    metric = _logit_diff(clean, corrupted)

    def zero_head_0(z, hook):
        z = z.clone()
        z[:, :, 0] = 0.0
        return z

    for name in (get_act_name("z", 1), get_act_name("attn_out", 1), get_act_name("resid_mid", 1)):
        hook = zero_head_0 if name.endswith("hook_z") else (lambda x, hook: x * 0.5)
        with model.hooks(fwd_hooks=[(name, hook)]):
            _, clean_cache = model.run_with_cache(clean)
            theirs = tlp.get_act_patch_attn_head_out_by_pos(model, corrupted, clean_cache, metric)
            ours = patching.activation_patch(model, clean, corrupted, _undeclared(metric), "head_out")
        assert (ours - theirs).abs().max().item() <= 1e-5, name
        assert not has_hooks(model)


@pytest.mark.parametrize("positions", ["standard", "alibi"])
def test_bidirectional_attention(tokens, positions):
    # A patch at position p reaches earlier positions too: nothing is skipped for being before p, no restarts.
    model = mt.build_model(dict(n_layers=2, d_model=16, d_head=4, n_heads=4, d_vocab=D_VOCAB, n_ctx=10, act_fn="gelu",
                                normalization_type="LN", d_mlp=8, attention_dir="bidirectional",
                                positional_embedding_type=positions), seed=3).eval()
    clean, corrupted = tokens
    metric = metrics.logit_diff(clean[:, 2], corrupted[:, 2], positions=2)
    _, clean_cache = model.run_with_cache(clean)
    for target in ("resid_pre", "head_out", "attn_out"):
        theirs = TL_FUNCTIONS[target](model, corrupted, clean_cache, metric)
        ours = patching.activation_patch(model, clean, corrupted, metric, target)
        assert (ours - theirs).abs().max().item() <= 1e-5, target
