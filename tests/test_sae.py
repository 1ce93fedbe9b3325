"""Sparse autoencoders: training, evaluation, splicing into a model, and loading."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

import mi_toolkit as mt
from mi_toolkit import SAE, GroundTruth, SAEConfig, ce_loss_recovered, mmcs, train_sae
from mi_toolkit.analysis.sae import decoder_spread, density_histogram, evaluate_sae, max_activating
from mi_toolkit.core import CheckpointError, collect_activations

# The dead-feature resampler has no public name (train_sae calls it); tested on features killed by hand.
from mi_toolkit.training.sae import SAETraining, _Buffer, _resample_dead

HOOK = "blocks.0.mlp.hook_post"


@pytest.fixture(scope="module")
def ground_truth():
    data = GroundTruth(n_features=64, d=32, feature_probability=0.05, seed=1)
    return data, data.sample(30_000)


def identity_sae(d: int) -> SAE:
    """ReLU(x) - ReLU(-x) = x: an SAE with exact reconstruction."""
    sae = SAE(SAEConfig(d_in=d, d_sae=2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["topk", "relu"])
def test_recovers_ground_truth_features(ground_truth, kind):
    data, x = ground_truth
    cfg = SAEConfig(d_in=32, d_sae=128, activation=kind, k=6, l1_coefficient=1.0, lr=1e-2, batch_size=512,
                    steps=600, seed=0)
    sae = train_sae(x, cfg, progress=False)
    # MMCS computed here from its definition, not with the library's mmcs().
    cos = F.normalize(data.features, dim=-1) @ F.normalize(sae.W_dec.detach(), dim=-1).T
    assert cos.max(dim=1).values.mean() >= 0.95
    assert mmcs(sae.W_dec, data.features) == pytest.approx(cos.max(dim=1).values.mean().item(), abs=1e-6)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(128))  # unit-norm decoder


@pytest.mark.slow
def test_jumprelu_recovers_ground_truth_features_and_learns_thresholds(ground_truth):
    data, x = ground_truth
    cfg = SAEConfig(d_in=32, d_sae=128, activation="jumprelu", lr=1e-2, batch_size=512, steps=600, seed=0)
    sae = train_sae(x, cfg, progress=False)
    cos = F.normalize(data.features, dim=-1) @ F.normalize(sae.W_dec.detach(), dim=-1).T
    assert cos.max(dim=1).values.mean() >= 0.95  # MMCS from its definition
    with torch.no_grad():
        pre = (x[:5000] - sae.b_dec) @ sae.W_enc + sae.b_enc
        f = sae.encode(x[:5000])
    threshold = sae.log_threshold.detach().exp()
    torch.testing.assert_close(f, pre * (pre > threshold))  # JumpReLU by definition
    # About 3.2 true features are active per input (64 x 0.05); an L0 penalty of 1 drops the faintest ones.
    assert 1.5 <= (f > 0).sum(-1).float().mean() <= 3.5
    ev = 1 - (sae.decode(f) - x[:5000]).pow(2).sum() / (x[:5000] - x[:5000].mean(0)).pow(2).sum()
    assert ev > 0.85
    # The thresholds moved from their start (0.5 in normalised units, divided by the data's scale here).
    scale = (32 / x.pow(2).sum(-1).mean()).sqrt()
    live = (f > 0).any(0)
    assert (threshold[live] * scale).median() > 0.8


@pytest.mark.slow
def test_batchtopk_keeps_k_per_input_on_average_and_encodes_as_jumprelu(ground_truth):
    data, x = ground_truth
    cfg = SAEConfig(d_in=32, d_sae=128, activation="batchtopk", k=4, lr=1e-2, batch_size=512, steps=600, seed=0)
    sae = train_sae(x, cfg, progress=False)
    cos = F.normalize(data.features, dim=-1) @ F.normalize(sae.W_dec.detach(), dim=-1).T
    assert cos.max(dim=1).values.mean() >= 0.95  # MMCS from its definition
    threshold = sae.log_threshold.detach().exp()
    assert not sae.log_threshold.requires_grad and (threshold == threshold[0]).all() and threshold[0] > 0
    held_out = data.sample(5000)
    with torch.no_grad():
        pre = (held_out - sae.b_dec) @ sae.W_enc + sae.b_enc
        f = sae.encode(held_out)
    torch.testing.assert_close(f, pre * (pre > threshold))  # a JumpReLU at inference
    l0 = (f > 0).sum(-1).float()
    assert l0.mean() == pytest.approx(4, rel=0.25)  # k on average, from the running threshold alone
    assert l0.std() > 0.5  # not k for every input: the batch shares the budget
    assert evaluate_sae(sae, held_out).explained_variance > 0.8


def test_batchtopk_step_keeps_the_batch_largest_activations(ground_truth):
    _, x = ground_truth
    cfg = SAEConfig(d_in=32, d_sae=64, activation="batchtopk", k=3, batch_size=16)
    sae = SAE(cfg)
    training = SAETraining(_Buffer(x[:64], cfg, torch.Generator().manual_seed(0)), cfg, 1.0,
                           torch.Generator().manual_seed(0), None)
    batch = x[:16]
    training.loss(sae, batch)
    acts = F.relu(sae.pre_activations(batch)).detach()
    kth = acts.flatten().sort(descending=True).values[3 * 16 - 1]  # the 48th largest of the batch, by sorting
    assert torch.equal(training.active, acts >= kth)
    assert training.smallest_kept == kth
    with torch.no_grad():
        training.after_step(sae, 0, torch.optim.Adam(sae.parameters()))
    torch.testing.assert_close(sae.threshold, kth.expand(64))  # the first step sets the threshold


def test_jumprelu_straight_through_gradients():
    """The threshold's gradient is the rectangle-kernel estimate of Rajamanoharan et al. 2024 (eqs. 11-12)."""
    from mi_toolkit.training.sae import SAETraining

    cfg = SAEConfig(d_in=2, d_sae=3, activation="jumprelu", l0_coefficient=2.0, bandwidth=0.1, initial_threshold=1.0)
    sae = SAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
        sae.W_dec.zero_()
    # pre = (x0, x1, x0): features 0 and 2 sit inside the kernel (|pre - 1| < 0.05) on both inputs, feature 1 outside.
    x = torch.tensor([[1.03, 2.0], [0.98, 0.2]])
    training = SAETraining.__new__(SAETraining)
    training.config = cfg
    loss = training.loss(sae, x)
    loss.backward()
    # With W_dec = 0 the reconstruction is b_dec, so d(loss)/df = 0 and only the L0 term moves the thresholds:
    # d/dtheta_i of l0 * mean_b sum_i H(pre - theta) = -(l0 / bandwidth) * mean_b K((pre_bi - theta_i) / bandwidth).
    inside = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])  # |pre - 1| < 0.05
    expected_dtheta = -(2.0 / 0.1) * inside.mean(0)
    torch.testing.assert_close(sae.log_threshold.grad, expected_dtheta * 1.0)  # d theta / d log theta = theta = 1
    assert loss.item() == pytest.approx(x.pow(2).sum(-1).mean().item() + 2.0 * 1.5)  # L0: 3 then 0 active

    # With a decoder, the reconstruction term adds -(theta / bandwidth) * sum_b dL/df_bi * K(...) / B ... through
    # the JumpReLU itself: checked against that formula with dL/df from autograd on a leaf f.
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1.0, 0.5], [0.0, 1.0], [-0.5, 0.3]]))
    sae.zero_grad()
    training.loss(sae, x).backward()
    f = (x @ sae.W_enc * (x @ sae.W_enc > 1.0)).detach().requires_grad_()
    (dl_df,) = torch.autograd.grad((f @ sae.W_dec.detach() - x).pow(2).sum(-1).mean(), f)
    torch.testing.assert_close(sae.log_threshold.grad, expected_dtheta - (1.0 / 0.1) * (dl_df * inside).sum(0))


def test_ground_truth_sparsity_and_correlation():
    independent = GroundTruth(50, 20, feature_probability=0.1, seed=0)
    correlated = GroundTruth(50, 20, feature_probability=0.1, correlation=0.8, seed=0)
    c_ind, c_cor = (g.coefficients(40_000) for g in (independent, correlated))
    for c in (c_ind, c_cor):  # each feature keeps its firing rate
        assert (c > 0).float().mean().item() == pytest.approx(0.1, abs=0.01)
        assert c.min() >= 0
    torch.testing.assert_close(independent.features.norm(dim=-1), torch.ones(50))

    def mean_abs_corr(c):
        r = torch.corrcoef((c > 0).float().T)
        return (r - torch.eye(50)).abs().sum() / (50 * 49)

    assert mean_abs_corr(c_cor) > 3 * mean_abs_corr(c_ind)


def test_identity_sae_splices_in_at_the_clean_loss(fitted_grokking_model):
    model, tokens, labels = fitted_grokking_model
    sae = identity_sae(model.cfg.d_mlp)
    result = ce_loss_recovered(model, sae, HOOK, tokens, positions=-1, metric=mt.metrics.answer_loss(labels))
    with torch.no_grad():
        clean = F.cross_entropy(model(tokens)[:, -1], labels).item()

        def zero_last(act, hook):
            act = act.clone()
            act[:, -1] = 0
            return act

        zero = F.cross_entropy(model.run_with_hooks(tokens, fwd_hooks=[(HOOK, zero_last)])[:, -1], labels).item()
    assert result.clean == pytest.approx(clean, abs=1e-9)
    assert result.sae == pytest.approx(clean, abs=1e-6)
    assert result.zero_ablated == pytest.approx(zero, abs=1e-9)
    assert result.zero_ablated != pytest.approx(clean, abs=1e-3)
    assert result.recovered_vs_zero == pytest.approx(1.0, abs=1e-4)
    assert result.recovered_vs_mean == pytest.approx(1.0, abs=1e-3)


def test_identity_sae_splice_with_default_language_model_loss(fitted_grokking_model):
    model, tokens, _ = fitted_grokking_model
    tokens = tokens[:, :2]  # next-token loss needs targets inside d_vocab_out, so leave out '='
    result = ce_loss_recovered(model, identity_sae(model.cfg.d_model), "blocks.0.hook_resid_mid", tokens)
    with torch.no_grad():
        assert result.sae == pytest.approx(model(tokens, return_type="loss").item(), abs=1e-5)


def test_train_from_model_stream_and_evaluate(fitted_grokking_model):
    model, tokens, labels = fitted_grokking_model
    cfg = SAEConfig(d_in=48, d_sae=96, activation="topk", k=8, batch_size=64, buffer_size=128, steps=150,
                    resample_every=50)
    # buffer_size < 121 activations: exercises the refill path of the buffer.
    sae = train_sae((model, HOOK, tokens, -1), cfg, progress=False)
    acts = collect_activations(model, HOOK, tokens, positions=-1)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(acts, cache[HOOK][:, -1])
    metrics = evaluate_sae(sae, acts)
    with torch.no_grad():
        f = sae.encode(acts)
        x_hat = sae(acts)
    assert metrics.l0 == pytest.approx((f > 0).sum(-1).float().mean().item(), rel=1e-5)
    assert metrics.l0 <= 8
    ev = 1 - ((acts - x_hat) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum()
    assert metrics.explained_variance == pytest.approx(ev.item(), abs=1e-4)
    assert metrics.explained_variance > 0.5
    assert metrics.n_dead == int(((f > 0).sum(0) == 0).sum())
    hist = density_histogram(metrics.density)
    assert hist.counts.sum().item() + hist.n_dead == 96


def test_normalisation_is_folded_into_the_biases(ground_truth):
    _, x = ground_truth
    cfg = SAEConfig(d_in=32, d_sae=64, activation="topk", k=6, steps=100, batch_size=256)
    small, large = train_sae(x, cfg, progress=False), train_sae(x * 1000, cfg, progress=False)
    # Normalised training sees the same data either way, so the SAEs agree up to the scale.
    torch.testing.assert_close(large.W_dec, small.W_dec, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(large(x[:100] * 1000) / 1000, small(x[:100]), atol=1e-3, rtol=1e-3)
    assert evaluate_sae(large, x * 1000).explained_variance > 0.5


def test_training_is_seeded(ground_truth):
    _, x = ground_truth
    cfg = SAEConfig(d_in=32, d_sae=64, steps=30, batch_size=256)
    a, b = train_sae(x, cfg, progress=False), train_sae(x, cfg, progress=False)
    c = train_sae(x, dataclasses.replace(cfg, seed=1), progress=False)
    assert torch.equal(a.W_enc, b.W_enc) and not torch.equal(a.W_enc, c.W_enc)


def test_dead_features_are_resampled(ground_truth):
    _, x = ground_truth
    sae = SAE(SAEConfig(d_in=32, d_sae=64))
    with torch.no_grad():  # a very negative encoder bias kills half the features
        sae.b_enc[32:] = -1e6
    live_before = sae.W_enc[:, :32].clone()
    assert (sae.encode(x[:256])[:, 32:] == 0).all()
    optimiser = torch.optim.Adam(sae.parameters())
    dead = torch.arange(64) >= 32
    _resample_dead(sae, optimiser, dead, x[:256], torch.Generator().manual_seed(0))
    assert (sae.b_enc[32:] == 0).all() and (sae.encode(x[:256])[:, 32:] > 0).any()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(64))
    assert torch.equal(sae.W_enc[:, :32], live_before)  # live features untouched


@pytest.mark.parametrize("aux_k", [0, 5, 30])  # 30 > the 22 dead features: all of them
def test_auxk_loss_reconstructs_the_error_from_dead_features(ground_truth, aux_k):
    """AuxK (Gao et al. 2024): the aux_k largest pre-activations among the dead features reconstruct the main
    reconstruction's error; only dead features get its gradient. Computed here from the definition."""
    _, x = ground_truth
    cfg = SAEConfig(d_in=32, d_sae=64, activation="topk", k=4, aux_k=aux_k, aux_coefficient=0.5, dead_steps=3,
                    batch_size=128)
    sae = SAE(cfg)
    gen = torch.Generator().manual_seed(0)
    training = SAETraining(_Buffer(x[:512], cfg, gen), cfg, 1.0, gen, None)
    dead = torch.arange(64) % 3 == 0
    training.since_fired[dead] = 3  # dead for dead_steps steps
    training.since_fired[~dead] = 2
    batch = x[:8]  # 8 x 4 TopK picks leave most features out of the main reconstruction
    loss = training.loss(sae, batch)
    with torch.no_grad():
        pre = (batch - sae.b_dec) @ sae.W_enc + sae.b_enc
        top = pre.topk(4, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        error = batch - (f @ sae.W_dec + sae.b_dec)
        expected = error.pow(2).sum(-1).mean()
        if aux_k:
            n = min(aux_k, int(dead.sum()))
            masked = pre.masked_fill(~dead, float("-inf")).topk(n, dim=-1)
            g = torch.zeros_like(pre).scatter(-1, masked.indices, masked.values.relu())
            expected += 0.5 * (error - g @ sae.W_dec).pow(2).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    # Dead features left out of the main reconstruction get a gradient from AuxK only.
    never_main = dead & ~torch.zeros(64, dtype=torch.bool).scatter(0, top.indices.flatten(), True)
    assert never_main.any()
    moved = sae.W_enc.grad[:, never_main].abs().sum(0) > 0
    assert moved.any() if aux_k else not moved.any()


def test_auxk_needs_topk():
    with pytest.raises(ValueError, match="TopK"):
        SAEConfig(d_in=4, d_sae=8, activation="relu", aux_k=2)
    with pytest.raises(ValueError, match="aux_k"):
        SAEConfig(d_in=4, d_sae=8, activation="topk", k=2, aux_k=9)


def test_max_activating_matches_brute_force(fitted_grokking_model):
    model, tokens, _ = fitted_grokking_model
    cfg = SAEConfig(d_in=48, d_sae=32, steps=0)
    sae = SAE(cfg)
    result = max_activating(model, sae, HOOK, tokens, k=3, batch_size=50)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        f = sae.encode(cache[HOOK])  # (batch, pos, d_sae)
    flat = f.reshape(-1, 32).T  # (d_sae, batch * pos)
    top = flat.topk(3, dim=1)
    torch.testing.assert_close(result.values, top.values)
    for i in range(32):
        for j in range(3):
            assert f[result.sequence[i, j], result.position[i, j], i] == result.values[i, j]
    last = max_activating(model, sae, HOOK, tokens, k=2, positions=-1)
    assert (last.position == 2).all()
    torch.testing.assert_close(last.values, f[:, -1].T.topk(2, dim=1).values)


def test_decoder_spread_on_known_directions():
    sae = SAE(SAEConfig(d_in=4, d_sae=3))
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0.5, 0.5], [0.8, 0.6, 0, 0]]))
    spread = decoder_spread(sae, fraction=0.9)
    torch.testing.assert_close(spread.participation_ratio, torch.tensor([1.0, 4.0, 1 / (0.64**2 + 0.36**2)]))
    assert spread.n_for_fraction.tolist() == [1, 4, 2]


def test_save_load_round_trip(tmp_path, ground_truth):
    _, x = ground_truth
    sae = train_sae(x, SAEConfig(d_in=32, d_sae=48, activation="topk", k=4, steps=20, batch_size=128),
                    progress=False)
    sae.save(tmp_path / "sae")
    loaded = SAE.load(tmp_path / "sae")
    assert loaded.cfg == sae.cfg
    for name, p in sae.named_parameters():
        assert torch.equal(p, getattr(loaded, name)), name
    assert torch.equal(loaded(x[:10]), sae(x[:10]))


def test_load_errors(tmp_path):
    sae = SAE(SAEConfig(d_in=8, d_sae=16))
    path = sae.save(tmp_path / "ok")
    with pytest.raises(CheckpointError, match="not found"):
        SAE.load(tmp_path / "missing")
    (path / "sae.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        SAE.load(path)
    path = sae.save(tmp_path / "mismatch")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "d_sae": 17}))
    with pytest.raises(CheckpointError, match="describes"):
        SAE.load(path)
    (path / "config.json").write_text(json.dumps({**cfg, "colour": "blue"}))
    with pytest.raises(CheckpointError, match="not a valid SAE config"):
        SAE.load(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt JSON"):
        SAE.load(path)
    assert issubclass(CheckpointError, ValueError)


def test_clear_errors_before_training(fitted_grokking_model):
    model, tokens, _ = fitted_grokking_model
    with pytest.raises(ValueError, match=r"d_in = 64 but the activation at hook 'blocks.0.mlp.hook_post' has size 48"):
        train_sae((model, HOOK, tokens), SAEConfig(d_in=64, d_sae=8))
    with pytest.raises(ValueError, match="cfg.d_in = 7 but each activation has size 32"):
        train_sae(torch.randn(10, 32), SAEConfig(d_in=7, d_sae=8))
    with pytest.raises(ValueError, match=r"no hook point 'blocks.0.mlp.hook_pots'.*blocks.0.mlp.hook_post"):
        train_sae((model, "blocks.0.mlp.hook_pots", tokens), SAEConfig(d_in=48, d_sae=8))
    with pytest.raises(ValueError, match="no hook point"):
        ce_loss_recovered(model, identity_sae(48), "blocks.9.mlp.hook_post", tokens)
    with pytest.raises(ValueError, match="size 32, the SAE reads 48"):
        ce_loss_recovered(model, identity_sae(48), "blocks.0.hook_resid_post", tokens)
    for bad in (dict(l1_coefficient=0.0), dict(l1_coefficient=-1.0), dict(k=0), dict(k=-3),
                dict(k=9, activation="topk"), dict(k=9, activation="batchtopk")):
        with pytest.raises(ValueError, match="l1_coefficient|k must"):
            SAEConfig(d_in=4, d_sae=8, **bad)
