"""The trainer: exact resume after an interrupt, refused and corrupt checkpoints, divergence, schedules, recipes,
Grokfast filters, and determinism."""

import ctypes
import json
import math
import platform
import warnings

import pytest
import torch

import mi_toolkit as mt
from mi_toolkit import ModularArithmetic, TrainConfig, train
from mi_toolkit.core import CheckpointError
from mi_toolkit.training import GrokfastEMA, GrokfastMA, TrainingDivergedError, heap, list_checkpoints, muon, recipes

P = 11


@pytest.fixture
def new_model(make_tiny_grokking_model):
    """A new tiny grokking transformer for p = 11 (d_model 16, 4 heads of 4, d_mlp 32) per call: tests train it."""
    return lambda seed=0: make_tiny_grokking_model(P, seed=seed)


class Interrupting(ModularArithmetic):
    """Raises KeyboardInterrupt when asked for the batch of step ``stop_at`` (as a user pressing Ctrl-C)."""

    def __init__(self, stop_at, **kw):
        super().__init__(**kw)
        object.__setattr__(self, "stop_at", stop_at)

    def train_batch(self, step):
        if step == self.stop_at:
            raise KeyboardInterrupt
        return super().train_batch(step)


@pytest.mark.parametrize("grad_filter, optimizer", [("none", "adamw"), ("ema", "adamw"), ("ma", "adamw"),
                                                    ("none", "muon")])
def test_resume_after_interrupt_gives_identical_weights(tmp_path, grad_filter, optimizer, new_model):
    cfg = TrainConfig(steps=30, lr=3e-3, warmup_steps=5, grad_filter=grad_filter, ma_window=4, log_every=5,
                      checkpoint_every=10, optimizer=optimizer)
    task = ModularArithmetic(p=P, frac_train=0.5)
    reference = new_model()
    ref = train(reference, task, cfg, tmp_path / "ref", progress=False)

    with pytest.raises(KeyboardInterrupt):
        train(new_model(), Interrupting(24, p=P, frac_train=0.5), cfg, tmp_path / "run", progress=False)
    resumed = new_model(seed=123)  # different init: everything must come from the checkpoint
    out = train(resumed, task, cfg, tmp_path / "run", progress=False)

    assert out.resumed_from == 20
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [r["step"] for r in ref.history] == list(range(0, 31, 5))
    assert lines[-1]["test_loss"] == ref.history[-1]["test_loss"]
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [10, 20, 30]


def test_resume_with_other_config_refused(tmp_path, new_model):
    task = ModularArithmetic(p=P, frac_train=0.5)
    train(new_model(), task, TrainConfig(steps=4, checkpoint_every=2), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="another configuration.*lr"):
        train(new_model(), task, TrainConfig(steps=8, lr=5e-3, checkpoint_every=2), tmp_path, progress=False)
    # more steps with the same settings continues
    resumed = train(new_model(), task, TrainConfig(steps=6, checkpoint_every=2, autocast="auto"), tmp_path,
                    progress=False)  # more steps, and another precision (only the rounding changes): allowed
    assert resumed.resumed_from == 4


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, new_model):
    task = ModularArithmetic(p=P, frac_train=0.5)
    train(new_model(), task, TrainConfig(steps=2, checkpoint_every=1), tmp_path, progress=False)
    (tmp_path / "checkpoints" / "resume.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        train(new_model(), task, TrainConfig(steps=4, checkpoint_every=1), tmp_path, progress=False)


class Exploding(ModularArithmetic):
    def loss(self, model, batch):
        return super().loss(model, batch) * float("nan")


def test_nan_loss_stops_with_message(tmp_path, new_model):
    with pytest.raises(TrainingDivergedError, match="loss became nan at step 0"):
        train(new_model(), Exploding(p=P), TrainConfig(steps=3), tmp_path, progress=False)


@pytest.mark.parametrize("kwargs", [dict(steps=0), dict(lr=0.0), dict(weight_decay=-1.0), dict(betas=(0.9, 1.0)),
                                    dict(grad_filter="sma"), dict(log_every=0), dict(optimizer="sgd"),
                                    dict(muon_lr=0.0), dict(muon_lr=float("inf")),
                                    dict(optimizer="muon", muon_lr=0.5, weight_decay=2.0),
                                    dict(lr_schedule="step"), dict(decay_fraction=1.5), dict(autocast="fp16")])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)
    with pytest.raises(ValueError):  # replace validates too
        TrainConfig().replace(**kwargs)


def test_recipes_are_configs_changed_with_replace():
    assert recipes.GROKKING_RECIPES == {"fast": recipes.GROKKING_FAST, "paper": recipes.GROKKING_PAPER}
    short = recipes.GROKKING_FAST.replace(steps=600)
    assert short.steps == 600 and recipes.GROKKING_FAST.steps == 5_000
    assert short.replace(steps=recipes.GROKKING_FAST.steps) == recipes.GROKKING_FAST
    assert (recipes.GROKKING_PAPER.lr, recipes.GROKKING_PAPER.weight_decay, recipes.GROKKING_PAPER.steps) == \
        (1e-3, 1.0, 40_000)
    # The fast recipe's weight decay is 3 at 2000 training pairs, scaled by sqrt(2000 / n_train).
    n_train = int(0.3 * 113 * 113)
    assert mt.GrokkingConfig(steps=600).train_config() == recipes.GROKKING_FAST.replace(
        steps=600, log_every=10, checkpoint_every=100, weight_decay=round(3.0 * (2000 / n_train) ** 0.5, 4))
    assert recipes.grokking_recipe("fast", 2000) == recipes.GROKKING_FAST
    assert recipes.grokking_recipe("paper", 10) == recipes.GROKKING_PAPER
    assert mt.GrokkingConfig(p=53, recipe="paper").train_config().weight_decay == 1.0
    # Training until done: the recipe's steps are the cap, unless max_steps replaces it.
    assert mt.GrokkingConfig().train_config().steps == recipes.GROKKING_FAST.steps
    assert mt.GrokkingConfig(max_steps=900).train_config().steps == 900


def test_lr_schedules_follow_their_formulas_and_measures_are_recorded(new_model):
    # The learning rate logged at step s is the one the next optimiser step uses: lr * warmup * schedule.
    def warmup(s):
        return min(1.0, (s + 1) / 4)

    cosine = TrainConfig(steps=20, lr=1e-2, warmup_steps=4, lr_schedule="cosine")
    for s in range(21):
        assert cosine.lr_factor(s) == pytest.approx(warmup(s) * 0.5 * (1 + math.cos(math.pi * s / 20)))
    config = TrainConfig(steps=20, lr=1e-2, warmup_steps=4, lr_schedule="linear_decay", decay_fraction=0.5,
                         log_every=2, checkpoint_every=1000)
    result = train(new_model(), ModularArithmetic(p=P, frac_train=0.5), config, progress=False,
                   measures=lambda model: {"measured": float(model.W_E.detach().sum())})
    assert [r["step"] for r in result.history] == list(range(0, 21, 2))
    for record in result.history:  # constant for the first half, then linearly to zero
        s = record["step"]
        assert record["lr"] == pytest.approx(1e-2 * warmup(s) * min(1.0, (20 - s) / 10), abs=1e-12)
    assert result.history[-1]["lr"] == 0.0
    assert all("measured" in r and "test_loss" in r for r in result.history)
    assert result.history[0]["measured"] != result.history[-1]["measured"]


def test_adam_and_adamw_differ_only_in_weight_decay(new_model):
    task = ModularArithmetic(p=P, frac_train=0.5)
    weights = {}
    for optimizer in ("adam", "adamw"):
        for weight_decay in (0.0, 1.0):
            model = new_model()
            train(model, task, TrainConfig(steps=3, lr=1e-2, weight_decay=weight_decay, optimizer=optimizer),
                  progress=False)
            weights[optimizer, weight_decay] = model.W_E.detach().clone()
    assert torch.equal(weights["adam", 0.0], weights["adamw", 0.0])
    assert not torch.allclose(weights["adam", 1.0], weights["adamw", 1.0])


def test_embedding_decay_scale_moves_only_the_embeddings_weight_decay(new_model):
    """Against torch's AdamW run by hand with the embeddings (W_E, W_pos, W_U) in a group of their own whose weight
    decay drops to 0.25x after step 2."""
    task = ModularArithmetic(p=P, frac_train=0.5)
    cfg = TrainConfig(steps=5, lr=1e-2, weight_decay=1.0, warmup_steps=0, grad_clip=None, log_every=5,
                      checkpoint_every=5)
    scale = lambda step: 1.0 if step < 2 else 0.25  # noqa: E731
    model = new_model()
    train(model, task, cfg, progress=False, embedding_decay_scale=scale)

    reference = new_model()
    embeddings = [reference.embed.W_E, reference.pos_embed.W_pos, reference.unembed.W_U, reference.unembed.b_U]
    embeddings = [p for p in embeddings if p.requires_grad]
    rest = [p for p in reference.parameters() if p.requires_grad and all(p is not e for e in embeddings)]
    optimizer = torch.optim.AdamW([{"params": rest}, {"params": embeddings}], lr=1e-2, betas=cfg.betas,
                                  weight_decay=1.0)
    for step in range(5):
        optimizer.zero_grad()
        task.loss(reference, task.train_batch(step)).backward()
        optimizer.param_groups[1]["weight_decay"] = scale(step)
        optimizer.step()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    plain = new_model()
    train(plain, task, cfg, progress=False)
    assert not torch.allclose(plain.W_E, model.W_E)  # the embeddings kept less of their decay
    with pytest.raises(ValueError, match="AdamW or Adam"):
        train(new_model(), task, cfg.replace(optimizer="muon"), progress=False, embedding_decay_scale=scale)


def test_resume_with_other_parameter_groups_is_a_clear_error(tmp_path, new_model):
    cfg = TrainConfig(steps=20, log_every=5, checkpoint_every=10)
    with pytest.raises(KeyboardInterrupt):
        train(new_model(), Interrupting(15, p=P, frac_train=0.5), cfg, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="grouped the parameters differently"):
        train(new_model(), ModularArithmetic(p=P, frac_train=0.5), cfg, tmp_path, progress=False,
              embedding_decay_scale=lambda step: 0.0)


def _one_param(grads):
    layer = torch.nn.Linear(1, 1, bias=False)
    for g in grads:
        layer.weight.grad = torch.tensor([[g]])
        yield layer


def test_grokfast_ema_matches_formula():
    alpha, lamb, grads = 0.9, 2.0, [1.0, -2.0, 0.5, 3.0]
    filt, out = GrokfastEMA(alpha, lamb), []
    for layer in _one_param(grads):
        filt(layer)
        out.append(layer.weight.grad.item())
    mu, expected = grads[0], []
    for i, g in enumerate(grads):
        mu = g if i == 0 else alpha * mu + (1 - alpha) * g
        expected.append(g + lamb * mu)
    assert out == pytest.approx(expected)


def test_grokfast_ma_matches_formula():
    window, lamb, grads = 3, 5.0, [1.0, -2.0, 0.5, 3.0, 4.0]
    filt, out = GrokfastMA(window, lamb), []
    for layer in _one_param(grads):
        filt(layer)
        out.append(layer.weight.grad.item())
    expected = [g if i < window - 1 else g + lamb * sum(grads[i - window + 1: i + 1]) / window
                for i, g in enumerate(grads)]
    assert out == pytest.approx(expected)


def test_same_seed_same_weights_with_two_threads():
    # Multi-threaded CPU backward kernels can sum in a thread-dependent order; the trainer must not let them.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        weights = []
        for _ in range(2):
            model = mt.make_induction_model(seed=0)
            train(model, mt.InductionTask(), TrainConfig(steps=30, lr=1e-2, weight_decay=0.01, warmup_steps=5,
                                                        log_every=1000, checkpoint_every=1000), progress=False)
            weights.append(model.state_dict())
    finally:
        torch.set_num_threads(threads)
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    assert not torch.are_deterministic_algorithms_enabled()  # the global setting is restored


def _induction_losses(config):
    model = mt.make_induction_model(seed=0)
    history = train(model, mt.InductionTask(), config, progress=False).history
    return model, [r["loss"] for r in history[1:]]


INDUCTION_CONFIG = TrainConfig(steps=12, lr=1e-2, weight_decay=0.01, warmup_steps=3, log_every=3,
                               checkpoint_every=1000)


def test_compiled_training_follows_eager_and_repeats_itself(recwarn, monkeypatch):
    # torch.compile changes the float rounding only: the losses follow eager training's, and a second compiled run
    # gives the same numbers (the same seed, the same numbers).
    _, eager = _induction_losses(INDUCTION_CONFIG)
    calls, compile_ = [], torch.compile

    def counted_compile(forward, **kwargs):  # every training step must go through the compiled forward
        compiled = compile_(forward, **kwargs)

        def counted(*args, **kw):
            calls.append(1)
            return compiled(*args, **kw)

        return counted

    monkeypatch.setattr(torch, "compile", counted_compile)
    first_model, compiled = _induction_losses(INDUCTION_CONFIG.replace(compile=True))
    second_model, again = _induction_losses(INDUCTION_CONFIG.replace(compile=True))
    assert len(calls) == 2 * INDUCTION_CONFIG.steps
    assert not [w for w in recwarn if "torch.compile failed" in str(w.message)]  # it really compiled
    assert compiled == pytest.approx(eager, rel=1e-3) and eager[-1] < eager[0]
    assert compiled == again
    for name, value in first_model.state_dict().items():
        assert torch.equal(value, second_model.state_dict()[name]), name


def _uncompilable(*args, **kwargs):
    """What ``torch.compile`` gives where compilation fails (no C++ compiler): an error at the first call."""
    raise RuntimeError("InductorError: no working C++ compiler found")


def test_failed_compilation_warns_and_trains_eagerly(monkeypatch):
    eager_model, eager = _induction_losses(INDUCTION_CONFIG)
    monkeypatch.setattr(torch, "compile", lambda forward, **kwargs: _uncompilable)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no working C\\+\\+ compiler.*training eagerly"):
        model, fallback = _induction_losses(INDUCTION_CONFIG.replace(compile=True))
    assert fallback == eager
    for name, value in eager_model.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name


def test_a_task_error_under_compile_is_the_task_s_own(monkeypatch):
    """An error that eager training raises too is not reported as a failed compilation."""

    class Broken(mt.InductionTask):
        def loss(self, model, batch):
            raise ValueError("the task's own bug")

    with pytest.raises(ValueError, match="the task's own bug"), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        train(mt.make_induction_model(seed=0), Broken(), INDUCTION_CONFIG.replace(compile=True), progress=False)


def test_a_compiled_run_resumes_eagerly(tmp_path):
    task = mt.InductionTask()
    config = INDUCTION_CONFIG.replace(checkpoint_every=6, compile=True)
    train(mt.make_induction_model(seed=0), task, config.replace(steps=6), tmp_path, progress=False)
    out = train(mt.make_induction_model(seed=1), task, config.replace(compile=False), tmp_path, progress=False)
    assert out.resumed_from == 6 and out.final_step == 12


def test_orthogonalise_gives_the_polar_factor_approximately():
    matrix = torch.randn(12, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for m in (matrix, matrix.T):
        u, _, vh = torch.linalg.svd(m, full_matrices=False)
        inner = u.T @ muon.orthogonalise(m) @ vh.T  # diagonal, in U and V's own bases
        assert torch.allclose(inner, torch.diag(torch.diagonal(inner)), atol=1e-6)
        assert 0.6 < torch.diagonal(inner).min() and torch.diagonal(inner).max() < 1.3  # every singular value ~1
    in_bf16 = muon.orthogonalise(matrix.to(torch.bfloat16)).double()  # the optimiser's, where bfloat16 is native
    assert (in_bf16 - muon.orthogonalise(matrix)).abs().max() < 0.03
    stacked = muon.orthogonalise(torch.stack([matrix, 2 * matrix]))  # a stack, each matrix on its own
    assert torch.allclose(stacked[0], muon.orthogonalise(matrix), atol=1e-6)
    assert torch.allclose(stacked[1], stacked[0], atol=1e-6)
    with pytest.raises(ValueError, match="matrix"):
        muon.orthogonalise(torch.ones(3))


def test_muon_moves_each_weight_by_the_orthogonalised_matrix_of_its_map(make_tiny_grokking_model):
    model = make_tiny_grokking_model(P, seed=0)
    groups = muon.muon_param_groups(model, lr=1e-3, muon_lr=0.1, weight_decay=0.5)
    in_muon = {id(p) for g in groups if g["kind"] == "muon" for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in in_muon}
    assert names == {f"blocks.0.{w}" for w in ("attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "mlp.W_in",
                                                 "mlp.W_out")}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    muon.Muon(groups, ns_dtype=torch.float32).step()
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    # The matrix of each map, written out independently: q = x @ M with M[i, (h, j)] = W_Q[h, i, j]; the
    # output reads z as [(h, j), d_model]; the MLP weights are matrices already.
    maps = {"attn.W_Q": lambda w: torch.cat(list(w), dim=1), "attn.W_O": lambda w: torch.cat(list(w), dim=0),
            "mlp.W_in": lambda w: w, "mlp.W_out": lambda w: w}
    for short, as_map in maps.items():
        name = f"blocks.0.{short}"
        g = as_map(grads[name])  # one step from a zero buffer: Nesterov's update is (1 + momentum) * g
        scale = max(1.0, g.shape[1] / g.shape[0]) ** 0.5
        expected = as_map(before[name]) * (1 - 0.1 * 0.5) - 0.1 * scale * muon.orthogonalise(g)
        assert torch.allclose(as_map(dict(model.named_parameters())[name].detach()), expected, atol=1e-6), name
    assert attn.W_Q.shape[0] > 1 and mlp.W_in.shape[0] != mlp.W_in.shape[1]


@pytest.mark.parametrize("native,ns_dtype,expected", [(True, None, torch.bfloat16), (False, None, torch.float32),
                                                     (True, torch.float32, torch.float32)])
def test_muon_orthogonalises_in_bfloat16_only_where_the_device_computes_it_natively(make_tiny_grokking_model,
                                                                                      monkeypatch, native, ns_dtype,
                                                                                      expected):
    assert not muon.native_bfloat16("meta")
    model = make_tiny_grokking_model(P, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    dtypes, orthogonalise = [], muon.orthogonalise
    monkeypatch.setattr(muon, "native_bfloat16", lambda device: native)
    monkeypatch.setattr(muon, "orthogonalise", lambda m, steps: dtypes.append(m.dtype) or orthogonalise(m, steps))
    optimizer = muon.Muon(muon.muon_param_groups(model, lr=1e-3, muon_lr=0.1, weight_decay=0.0), ns_dtype=ns_dtype)
    optimizer.step()
    assert dtypes and set(dtypes) == {expected}  # an explicit ns_dtype wins over the device's
    assert optimizer.ns_dtype_on("cpu") == expected
    moved = [n for n, p in model.named_parameters() if p.dtype == torch.float32 and not torch.equal(p, before[n])]
    assert "blocks.0.mlp.W_in" in moved and "blocks.0.attn.W_Q" in moved


class RecordsPrecision(ModularArithmetic):
    """Records the dtype of each training step's logits: bfloat16 under autocast, float32 without."""

    def __init__(self, **kw):
        super().__init__(**kw)
        object.__setattr__(self, "dtypes", [])

    def loss(self, model, batch):
        self.dtypes.append(model(batch[0]).dtype)
        return super().loss(model, batch)


@pytest.mark.parametrize("autocast,native,expected", [("auto", True, torch.bfloat16), ("auto", False, torch.float32),
                                                      ("bf16", True, torch.bfloat16), ("bf16", False, torch.bfloat16),
                                                      (None, True, torch.float32)])
def test_auto_autocast_trains_in_bfloat16_only_where_the_device_computes_it_natively(new_model, monkeypatch, autocast,
                                                                                     native, expected):
    monkeypatch.setattr(mt.training.trainer, "native_bfloat16", lambda device: native)
    task = RecordsPrecision(p=P, frac_train=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(new_model(), task, TrainConfig(steps=2, autocast=autocast), progress=False)
    assert task.dtypes == [expected, expected] and result.precision == {"loss": str(expected)[6:]}  # recorded
    emulated = [w for w in caught if "no native bfloat16" in str(w.message)]
    assert len(emulated) == (autocast == "bf16" and not native)  # an explicit bf16 where it is emulated warns


def test_muon_s_other_parameters_take_torch_s_adamw_update(make_tiny_grokking_model):
    a, b = make_tiny_grokking_model(P, seed=0), make_tiny_grokking_model(P, seed=0)
    ours = muon.Muon([{"params": list(a.parameters()), "kind": "adamw", "lr": 1e-2, "weight_decay": 0.3,
                       "betas": (0.9, 0.98)}])
    reference = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.3, betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        for p, q in zip(a.parameters(), b.parameters()):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        ours.step()
        reference.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    with pytest.raises(ValueError, match="kind"):
        muon.Muon([{"params": list(a.parameters())}])


def test_muon_keeps_a_nesterov_momentum_buffer_and_logs_the_recipe_lr(make_tiny_grokking_model):
    # Three steps on one Linear against the update written out: buf = m buf + g; step along orth(g + m buf).
    layer = torch.nn.Linear(6, 9, bias=False)
    reference = layer.weight.detach().clone()
    optimizer = muon.Muon(muon.muon_param_groups(layer, lr=1e-3, muon_lr=0.05, weight_decay=0.1),
                          momentum=0.9, ns_dtype=torch.float32)
    buffer, generator = torch.zeros_like(reference), torch.Generator().manual_seed(3)
    for _ in range(3):
        grad = torch.randn(reference.shape, generator=generator)
        layer.weight.grad = grad.clone()
        optimizer.step()
        buffer = 0.9 * buffer + grad
        update = muon.orthogonalise((grad + 0.9 * buffer).T).T  # the map reads the 6 inputs: [in, out] = weight.T
        reference = reference * (1 - 0.05 * 0.1) - 0.05 * max(1.0, 9 / 6) ** 0.5 * update
        assert torch.allclose(layer.weight.detach(), reference, atol=1e-6)
    # The trainer logs the recipe's (AdamW's) learning rate; Muon's group follows the same schedule.
    result = train(make_tiny_grokking_model(P, seed=0), ModularArithmetic(p=P, frac_train=0.5),
                   TrainConfig(steps=4, lr=3e-3, muon_lr=0.02, warmup_steps=1, optimizer="muon", log_every=2),
                   progress=False)
    assert [r["lr"] for r in result.history] == [3e-3] * 3


def test_muon_groups_follow_the_modules_not_the_names():
    from transformer_lens import HookedTransformerConfig

    from mi_toolkit.models.factory import build_model

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_heads=4, d_head=4, n_key_value_heads=2, d_mlp=32,
                                  gated_mlp=True, act_fn="silu", d_vocab=10, n_ctx=8, normalization_type="LN")
    model = build_model(cfg, seed=0)
    model.head = torch.nn.Linear(16, 3)  # a plain Linear joins Muon as [in, out] = weight.T
    model.other = torch.nn.Module()
    model.other.W_in = torch.nn.Parameter(torch.zeros(2, 16, 4))  # a TransformerLens name elsewhere: AdamW
    groups = muon.muon_param_groups(model, lr=1e-3, muon_lr=0.02, weight_decay=0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    kinds = {names[id(p)]: (g["kind"], tuple(g.get("input_dims", ()))) for g in groups for p in g["params"]}
    assert groups[0]["kind"] == "adamw"
    assert {n: k for n, k in kinds.items() if k[0] == "muon"} == {
        "blocks.0.attn.W_Q": ("muon", (1,)), "blocks.0.attn.W_O": ("muon", (0, 1)),
        "blocks.0.attn._W_K": ("muon", (1,)), "blocks.0.attn._W_V": ("muon", (1,)),
        "blocks.0.mlp.W_in": ("muon", (0,)), "blocks.0.mlp.W_gate": ("muon", (0,)),
        "blocks.0.mlp.W_out": ("muon", (0,)), "head.weight": ("muon", (1,))}
    assert kinds["other.W_in"][0] == kinds["embed.W_E"][0] == kinds["unembed.W_U"][0] == "adamw"
    assert len(kinds) == len(names)  # every trainable parameter in exactly one group
    with pytest.raises(ValueError, match="input_dims"):
        muon.Muon([{"params": [model.other.W_in], "kind": "muon"}])



class _RecordingLibc:
    """Stands in for glibc: records ``mallopt`` and ``malloc_trim`` calls; ``mallopt`` answers ``accepts``."""

    def __init__(self, accepts=1):
        self.calls, self.accepts = [], accepts

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.accepts

    def malloc_trim(self, pad):
        self.calls.append(("trim", pad))
        return 1


def test_training_keeps_large_blocks_on_the_heap_while_it_trains(monkeypatch):
    """Set before the first step, set to glibc's ceilings after the last; the same weights as a run without."""
    libc = _RecordingLibc()
    calls_at_steps = []

    class Task(mt.ModularArithmetic):
        def loss(self, model, batch):
            calls_at_steps.append(list(libc.calls))
            return super().loss(model, batch)

    config = TrainConfig(steps=3, lr=1e-3, log_every=1000, checkpoint_every=1000)
    weights = []
    for glibc in (lambda: libc, heap.glibc, lambda: None):  # a recording one, the real C library, none
        monkeypatch.setattr(heap, "glibc", glibc)
        model = mt.make_grokking_model(p=7, seed=0)
        train(model, Task(p=7, frac_train=0.5, seed=0), config, progress=False)
        weights.append(model.state_dict())
    for other in weights[1:]:
        for name, value in weights[0].items():
            assert torch.equal(value, other[name]), name
    during, after = list(heap.DURING_TRAINING.items()), list(heap.AFTER_TRAINING.items())
    assert calls_at_steps[:3] == [during] * 3
    assert libc.calls == during + after + [("trim", 0)]


def test_heap_settings_nest_survive_errors_and_respect_the_user(monkeypatch):
    libc = _RecordingLibc()
    monkeypatch.setattr(heap, "glibc", lambda: libc)
    during, after = list(heap.DURING_TRAINING.items()), list(heap.AFTER_TRAINING.items())
    with pytest.raises(RuntimeError, match="boom"):
        with heap.large_blocks_on_heap("cpu"):
            with heap.large_blocks_on_heap("cpu"):  # a run inside a run: the outer one keeps the setting
                pass
            assert libc.calls == during
            raise RuntimeError("boom")
    assert libc.calls == during + after + [("trim", 0)]  # set back after the error too
    for kind, value in [("device", "meta"), ("env", "MALLOC_MMAP_THRESHOLD_"), ("tunables", "glibc.malloc.mxfast=0")]:
        libc.calls.clear()
        with monkeypatch.context() as patch:
            if kind == "env":
                patch.setenv(value, "1000000")
            elif kind == "tunables":
                patch.setenv("GLIBC_TUNABLES", value)
            with heap.large_blocks_on_heap(value if kind == "device" else "cpu"):
                pass
        assert libc.calls == [], kind  # not a CPU, or the user tuned the allocator: untouched
    refusing = _RecordingLibc(accepts=0)  # an older glibc refuses a 1 GiB threshold: nothing else is changed
    monkeypatch.setattr(heap, "glibc", lambda: refusing)
    with heap.large_blocks_on_heap("cpu"):
        pass
    assert refusing.calls == during[:1]


def test_large_blocks_stay_on_the_real_heap_inside_only():
    """Against the C library itself: a 64 MB tensor is mapped outside the block and comes from the heap inside."""
    libc = heap.glibc()
    if libc is None:  # not glibc: nothing to keep on its heap, and nothing is changed
        assert platform.libc_ver()[0] != "glibc"
        return

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc.mallinfo2.restype = MallInfo2

    def mapped_by_a_64_mb_tensor() -> int:
        before = libc.mallinfo2().hblkhd
        block = torch.empty(64 << 20, dtype=torch.uint8)
        grown = libc.mallinfo2().hblkhd - before
        del block
        return grown

    assert mapped_by_a_64_mb_tensor() >= 64 << 20
    with heap.large_blocks_on_heap("cpu"):
        assert mapped_by_a_64_mb_tensor() == 0
    assert mapped_by_a_64_mb_tensor() >= 64 << 20
