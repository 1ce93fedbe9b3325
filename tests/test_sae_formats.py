"""SAE files of other libraries: SAELens 6.x directories and Gemma Scope's params.npz, read and written.

Files are built here from known weights with numpy / safetensors directly, and the expected encode and decode are
computed from the raw arrays with the formats' own formulas in float64, never with the code under test. The round
trips against the real SAELens library run its own ``save_model`` / ``load_from_disk``.
"""

import copy
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import mi_toolkit as mt
from mi_toolkit import SAE, SAEConfig, load_sae
from mi_toolkit.core import CheckpointError

HOOK = "blocks.0.mlp.hook_post"
TOL = 1e-6


def known_weights(d_in: int, d_sae: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 SAE weights with non-zero biases and positive thresholds, as a released SAE would have."""
    rng = np.random.default_rng(seed)
    return {
        "W_enc": (rng.standard_normal((d_in, d_sae)) / np.sqrt(d_in)).astype(np.float32),
        "W_dec": (rng.standard_normal((d_sae, d_in)) / np.sqrt(d_in)).astype(np.float32),
        "b_enc": (0.1 * rng.standard_normal(d_sae)).astype(np.float32),
        "b_dec": (0.1 * rng.standard_normal(d_in)).astype(np.float32),
        "threshold": rng.uniform(0.05, 0.4, d_sae).astype(np.float32),
    }


def reference(w: dict[str, np.ndarray], x: np.ndarray, *, architecture: str, apply_b_dec_to_input: bool,
              k: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(f, x_hat)`` in float64 from the raw arrays: SAELens's standard / topk / jumprelu and Gemma Scope."""
    w = {name: a.astype(np.float64) for name, a in w.items()}
    pre = (x - w["b_dec"] * apply_b_dec_to_input) @ w["W_enc"] + w["b_enc"]
    if architecture == "standard":
        f = np.maximum(pre, 0)
    elif architecture == "topk":
        top = np.argsort(-pre, axis=-1)[:, :k]
        f = np.zeros_like(pre)
        np.put_along_axis(f, top, np.maximum(np.take_along_axis(pre, top, -1), 0), -1)
    else:  # jumprelu: Gemma Scope's pre * (pre > t); SAELens's ReLU(pre) * (pre > t) is the same for t >= 0
        f = pre * (pre > w["threshold"])
    return f, f @ w["W_dec"] + w["b_dec"]


def check_reproduces(sae: SAE, w, x: np.ndarray, **formula) -> float:
    """Assert that encode, forward and decode match the reference to TOL, run in float64 (the loaded SAE's
    parameters are the file's float32 values, so any error is the conventions', not float32 rounding), and in float32
    to TOL relative to the values' scale. Returns the largest float64 error."""
    f_ref, x_hat_ref = reference(w, x, **formula)
    errors = []
    for dtype in (torch.float64, torch.float32):
        model = copy.deepcopy(sae).to(dtype)
        with torch.no_grad():
            f = model.encode(torch.from_numpy(x).to(dtype)).double().numpy()
            x_hat = model(torch.from_numpy(x).to(dtype)).double().numpy()
            decoded = model.decode(torch.from_numpy(f_ref).to(dtype)).double().numpy()
        errors.append(max(np.abs(f - f_ref).max(), np.abs(x_hat - x_hat_ref).max(), np.abs(decoded - x_hat_ref).max()))
        assert (f > 0).sum() == (f_ref > 0).sum() > 0  # the same features fire (and some do)
    scale = max(np.abs(f_ref).max(), np.abs(x_hat_ref).max())
    assert errors[0] < TOL and errors[1] < TOL * scale, (errors, scale)
    return errors[0]


def write_saelens_dir(path, w: dict[str, np.ndarray], cfg: dict):
    """A directory as SAELens 6.x's ``save_model`` writes it: ``cfg.json`` and ``sae_weights.safetensors``."""
    path.mkdir(parents=True)
    save_file({name: torch.from_numpy(a) for name, a in w.items()}, str(path / "sae_weights.safetensors"))
    full = {"d_in": w["W_enc"].shape[0], "d_sae": w["W_enc"].shape[1], "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"sae_lens_version": "6.5.0", "sae_lens_training_version": "6.5.0", "hook_name": HOOK},
            **cfg}
    (path / "cfg.json").write_text(json.dumps(full))
    return path


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((300, 24)).astype(np.float32)


def test_gemma_scope_params_npz(tmp_path, x):
    w = known_weights(24, 64)
    np.savez(tmp_path / "params.npz", **w)
    for path in (tmp_path / "params.npz", tmp_path):  # the file, or the directory holding it
        sae = load_sae(path)
        assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.activation, sae.cfg.apply_b_dec_to_input) == (
            24, 64, "jumprelu", False)
        check_reproduces(sae, w, x, architecture="jumprelu", apply_b_dec_to_input=False)
    # Gemma Scope's own files spell the weights in lower case on some releases.
    np.savez(tmp_path / "lower.npz", **{name.lower() if name.startswith("W") else name: a for name, a in w.items()})
    check_reproduces(load_sae(tmp_path / "lower.npz"), w, x, architecture="jumprelu", apply_b_dec_to_input=False)


@pytest.mark.parametrize("architecture,apply_b_dec", [("standard", True), ("standard", False), ("topk", True),
                                                      ("jumprelu", True), ("jumprelu", False)])
def test_saelens_directory(tmp_path, x, architecture, apply_b_dec):
    w = known_weights(24, 64, seed=2)
    if architecture != "jumprelu":
        del w["threshold"]
    cfg = {"architecture": architecture, "apply_b_dec_to_input": apply_b_dec}
    if architecture == "topk":
        cfg.update(k=7, rescale_acts_by_decoder_norm=False)
    sae = load_sae(write_saelens_dir(tmp_path / "sae", w, cfg))
    assert sae.cfg.activation == {"standard": "relu"}.get(architecture, architecture)
    check_reproduces(sae, w, x, architecture=architecture, apply_b_dec_to_input=apply_b_dec, k=7)


def test_saelens_topk_rescaled_by_decoder_norm(tmp_path, x):
    w = known_weights(24, 64, seed=3)
    del w["threshold"]
    w["W_dec"] *= np.random.default_rng(4).uniform(0.5, 2.0, (64, 1)).astype(np.float32)  # rows not unit norm
    sae = load_sae(write_saelens_dir(tmp_path / "sae", w, {"architecture": "topk", "k": 5,
                                                           "rescale_acts_by_decoder_norm": True}))
    # SAELens: pre * ||W_dec_i|| selects and feeds the TopK; the decoder divides the norms out again.
    norms = np.linalg.norm(w["W_dec"].astype(np.float64), axis=-1)
    folded = {**w, "W_enc": w["W_enc"] * norms, "b_enc": w["b_enc"] * norms, "W_dec": w["W_dec"] / norms[:, None]}
    check_reproduces(sae, folded, x, architecture="topk", apply_b_dec_to_input=True, k=5)


INFERENCE = {"relu": "relu", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}
"""What each architecture is at inference, and so in the foreign formats (BatchTopK: a JumpReLU)."""
SAELENS_NAME = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}


@pytest.mark.parametrize("activation", ["relu", "topk", "jumprelu", "batchtopk"])
def test_save_in_each_format_and_load_back(tmp_path, x, activation):
    sae = SAE(SAEConfig(d_in=24, d_sae=64, activation=activation, k=6, seed=5))
    w = known_weights(24, 64, seed=6)
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(sae, name).copy_(torch.from_numpy(w[name]))
        if activation in ("jumprelu", "batchtopk"):  # (BatchTopK's threshold is one number in practice)
            sae.log_threshold.copy_(torch.from_numpy(w["threshold"]).log())
    sae, xt = sae.double(), torch.from_numpy(x).double()  # float64: differences are the formats', not rounding
    formats = ["toolkit", "saelens"] + (["gemma_scope"] if activation != "topk" else [])
    for format in formats:
        loaded = load_sae(sae.save(tmp_path / format, format=format)).double()
        assert (loaded.cfg.d_in, loaded.cfg.d_sae, loaded.cfg.activation) == (
            24, 64, activation if format == "toolkit" else "jumprelu" if format == "gemma_scope"
            else INFERENCE[activation])
        with torch.no_grad():
            torch.testing.assert_close(loaded.encode(xt), sae.encode(xt), atol=TOL, rtol=0)
            torch.testing.assert_close(loaded(xt), sae(xt), atol=TOL, rtol=0)
    assert load_sae(tmp_path / "toolkit").cfg == sae.cfg
    assert all(torch.equal(p, q) for p, q in zip(load_sae(tmp_path / "toolkit").double().parameters(),
                                                   sae.parameters()))
    # The files hold what the formats say, read back with plain numpy / safetensors.
    thresholds = w["threshold"] if activation in ("jumprelu", "batchtopk") else np.zeros(64, np.float32)
    if activation != "topk":
        with np.load(tmp_path / "gemma_scope" / "params.npz", allow_pickle=False) as npz:
            assert sorted(npz.files) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
            np.testing.assert_allclose(npz["threshold"], thresholds, rtol=1e-6)
            # b_dec @ W_enc folded into b_enc: Gemma Scope's encoder reads x @ W_enc + b_enc
            np.testing.assert_allclose(npz["b_enc"], w["b_enc"] - w["b_dec"] @ w["W_enc"], atol=1e-6)
    else:
        with pytest.raises(ValueError, match="TopK SAE cannot be written as Gemma Scope"):
            sae.save(tmp_path / "gs", format="gemma_scope")
    cfg = json.loads((tmp_path / "saelens" / "cfg.json").read_text())
    assert cfg["architecture"] == SAELENS_NAME[activation]
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")


@pytest.fixture(scope="module")
def real_saelens():
    with warnings.catch_warnings():  # SAELens imports TransformerLens's deprecated ``utils`` module
        warnings.simplefilter("ignore", DeprecationWarning)
        import sae_lens

    assert sae_lens.__version__.startswith("6."), sae_lens.__version__
    return sae_lens


@pytest.mark.parametrize("activation", ["relu", "topk", "jumprelu", "batchtopk"])
def test_round_trip_with_real_saelens(tmp_path, x, real_saelens, activation):
    """toolkit -> SAELens's load_from_disk, and SAELens's save_model -> toolkit, compared on encode and decode."""
    sae = SAE(SAEConfig(d_in=24, d_sae=64, activation=activation, k=6, seed=7))
    w = known_weights(24, 64, seed=8)
    with torch.no_grad():
        for name in ("b_enc", "b_dec"):
            getattr(sae, name).copy_(torch.from_numpy(w[name]))
        if activation in ("jumprelu", "batchtopk"):
            sae.log_threshold.copy_(torch.from_numpy(w["threshold"]).log())
    xt = torch.from_numpy(x)
    lens = real_saelens.SAE.load_from_disk(sae.save(tmp_path / "ours", format="saelens"))
    assert lens.cfg.architecture() == SAELENS_NAME[activation]
    with torch.no_grad():
        torch.testing.assert_close(lens.encode(xt), sae.encode(xt), atol=TOL, rtol=0)
        torch.testing.assert_close(lens.decode(lens.encode(xt)), sae(xt), atol=TOL, rtol=0)

    # The reverse: an SAE SAELens made and saved, not applying b_dec to the input.
    classes = {"relu": ("StandardSAE", "StandardSAEConfig", {}), "topk": ("TopKSAE", "TopKSAEConfig", {"k": 6}),
               "jumprelu": ("JumpReLUSAE", "JumpReLUSAEConfig", {})}[INFERENCE[activation]]
    cls, cfg_cls, extra = (getattr(real_saelens, name) if isinstance(name, str) else name for name in classes)
    theirs = cls(cfg_cls(d_in=24, d_sae=64, apply_b_dec_to_input=False, **extra))
    with torch.no_grad():
        for name, value in w.items():
            if hasattr(theirs, name):
                getattr(theirs, name).copy_(torch.from_numpy(value))
    theirs.save_model(tmp_path / "theirs")
    loaded = load_sae(tmp_path / "theirs")
    assert loaded.cfg.apply_b_dec_to_input is False
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(xt), theirs.encode(xt), atol=TOL, rtol=0)
        torch.testing.assert_close(loaded(xt), theirs.decode(theirs.encode(xt)), atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def loaded_saes(tmp_path_factory):
    """A Gemma Scope file and a SAELens directory of SAEs on the fitted model's MLP neurons (d_mlp 48)."""
    root = tmp_path_factory.mktemp("saes")
    gemma = known_weights(48, 96, seed=9)
    gemma["threshold"] *= 0.2  # so that a good share of the features fire on these activations
    np.savez(root / "params.npz", **gemma)
    lens = {name: a for name, a in known_weights(48, 96, seed=10).items() if name != "threshold"}
    write_saelens_dir(root / "lens", lens, {"architecture": "topk", "k": 12})
    return {"gemma_scope": (load_sae(root / "params.npz"), gemma, dict(architecture="jumprelu",
                                                                          apply_b_dec_to_input=False)),
            "saelens": (load_sae(root / "lens"), lens, dict(architecture="topk", apply_b_dec_to_input=True, k=12))}


@pytest.mark.parametrize("format", ["gemma_scope", "saelens"])
def test_loaded_saes_evaluate_splice_and_steer(fitted_grokking_model, loaded_saes, format):
    model, tokens, labels = fitted_grokking_model
    sae, w, formula = loaded_saes[format]
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(tokens, names_filter=HOOK)
    acts = cache[HOOK][:, -1].double().numpy()
    f_ref, x_hat_ref = reference(w, acts, **formula)

    metrics = mt.evaluate_sae(sae, torch.from_numpy(acts).float())
    assert metrics.l0 == pytest.approx((f_ref > 0).sum(-1).mean(), abs=1e-5)
    ev = 1 - ((acts - x_hat_ref) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum()
    assert metrics.explained_variance == pytest.approx(ev, abs=1e-5)

    def put_last(values):
        def hook(act, hook):
            act = act.clone()
            act[:, -1] = torch.from_numpy(values).to(act.dtype)
            return act
        return hook

    def answer_loss(fwd_hooks):
        with torch.no_grad():
            return F.cross_entropy(model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)[:, -1], labels).item()

    result = mt.ce_loss_recovered(model, sae, HOOK, tokens, positions=-1, metric=mt.metrics.answer_loss(labels))
    assert result.sae == pytest.approx(answer_loss([(HOOK, put_last(x_hat_ref))]), abs=1e-5)
    assert result.clean == pytest.approx(F.cross_entropy(clean_logits[:, -1], labels).item(), abs=1e-6)

    feature = int((f_ref > 0).sum(0).argmax())  # the feature that fires most often
    steered = acts + (3.0 - f_ref[:, feature : feature + 1]) * w["W_dec"][feature].astype(np.float64)
    with model.hooks(fwd_hooks=[(HOOK, mt.clamp_feature(sae, feature, 3.0, positions=-1))]):
        with torch.no_grad():
            loss = F.cross_entropy(model(tokens)[:, -1], labels).item()
    assert loss == pytest.approx(answer_loss([(HOOK, put_last(steered))]), abs=1e-5)


def test_files_of_neither_format_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"empty holds no SAE.*cfg.json.*params.npz"):
        load_sae(tmp_path / "empty")
    (tmp_path / "weights.bin").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match=r"weights.bin is not an SAE file"):
        load_sae(tmp_path / "weights.bin")
    np.save(tmp_path / "array.npy", np.zeros(3))  # an .npy, not an .npz archive
    with pytest.raises(CheckpointError, match=r"array.npy is not an SAE file"):
        load_sae(tmp_path / "array.npy")
    with pytest.raises(CheckpointError, match="SAE not found: .*missing"):
        load_sae(tmp_path / "missing")


def test_bad_gemma_scope_files(tmp_path):
    w = known_weights(8, 16)
    np.savez(tmp_path / "no_threshold.npz", **{k: v for k, v in w.items() if k != "threshold"})
    with pytest.raises(CheckpointError, match=r"no_threshold.npz lacks \['threshold'\]"):
        load_sae(tmp_path / "no_threshold.npz")
    np.savez(tmp_path / "shapes.npz", **{**w, "W_dec": w["W_dec"][:, :7]})
    with pytest.raises(CheckpointError, match=r"shapes.npz: shapes disagree.*'W_dec': \(16, 7\)"):
        load_sae(tmp_path / "shapes.npz")
    np.savez(tmp_path / "pickled.npz", **w, extra=np.array([{"code": "run me"}], dtype=object))
    with pytest.raises(CheckpointError, match=r"unreadable Gemma Scope file .*pickled.npz"):
        load_sae(tmp_path / "pickled.npz")  # never unpickled
    np.savez(tmp_path / "negative.npz", **{**w, "threshold": -w["threshold"]})
    with pytest.raises(CheckpointError, match="negative.npz: negative thresholds"):
        load_sae(tmp_path / "negative.npz")


def test_bad_saelens_directories(tmp_path):
    w = {k: v for k, v in known_weights(8, 16).items() if k != "threshold"}
    path = write_saelens_dir(tmp_path / "d_sae", w, {"architecture": "standard", "d_sae": 17})
    with pytest.raises(CheckpointError, match=r"d_sae/sae_weights.safetensors holds .* but cfg.json describes"):
        load_sae(path)
    path = write_saelens_dir(tmp_path / "no_b_enc", {k: v for k, v in w.items() if k != "b_enc"},
                             {"architecture": "standard"})
    with pytest.raises(CheckpointError, match=r"no_b_enc/sae_weights.safetensors lacks \['b_enc'\]"):
        load_sae(path)
    path = write_saelens_dir(tmp_path / "jump", w, {"architecture": "jumprelu"})
    with pytest.raises(CheckpointError, match=r"jump/sae_weights.safetensors lacks \['threshold'\]"):
        load_sae(path)
    for name, cfg, message in [("gated", {"architecture": "gated"}, "architecture 'gated' is not supported"),
                               ("norm", {"architecture": "standard", "normalize_activations": "layer_norm"},
                                "normalize_activations='layer_norm'"),
                               ("topk", {"architecture": "topk"}, "lacks 'k'")]:
        path = write_saelens_dir(tmp_path / name, w, cfg)
        with pytest.raises(CheckpointError, match=f"{name}/cfg.json.*{message}"):
            load_sae(path)
    path = write_saelens_dir(tmp_path / "no_d_in", w, {"architecture": "standard"})
    cfg = json.loads((path / "cfg.json").read_text())
    del cfg["d_in"]
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"no_d_in/cfg.json lacks \['d_in'\]"):
        load_sae(path)


def test_sae_that_does_not_fit_the_hook_it_is_spliced_into(fitted_grokking_model):
    model, tokens, _ = fitted_grokking_model
    sae = SAE(SAEConfig(d_in=48, d_sae=16))  # fits blocks.0.mlp.hook_post (d_mlp 48), not the residual stream (32)
    for hook in (mt.splice_sae(sae), mt.clamp_feature(sae, 0, 1.0), mt.scale_feature(sae, 0, 2.0)):
        with pytest.raises(ValueError, match=r"d_in = 48, but the activation at hook 'blocks.0.hook_resid_post' "
                                             r"has 32 entries"):
            with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", hook)]):
                model(tokens)
    with pytest.raises(ValueError, match=r"hook 'blocks.0.hook_resid_post' has activations of size 32"):
        mt.ce_loss_recovered(model, sae, "blocks.0.hook_resid_post", tokens)
