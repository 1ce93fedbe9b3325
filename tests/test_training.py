import json

import pytest
import torch

from mi_toolkit import ModularArithmetic, TrainConfig, make_grokking_model, train
from mi_toolkit.checkpoints import CheckpointError
from mi_toolkit.grokfast import GrokfastEMA, GrokfastMA
from mi_toolkit.training import TrainingDivergedError, list_checkpoints

P = 11


def _model(seed=0):
    return make_grokking_model(P, d_model=16, d_head=4, d_mlp=32, seed=seed)


class Interrupting(ModularArithmetic):
    """Raises KeyboardInterrupt when asked for the batch of step ``stop_at`` (as a user pressing Ctrl-C)."""

    def __init__(self, stop_at, **kw):
        super().__init__(**kw)
        object.__setattr__(self, "stop_at", stop_at)

    def train_batch(self, step):
        if step == self.stop_at:
            raise KeyboardInterrupt
        return super().train_batch(step)


@pytest.mark.parametrize("grad_filter", ["none", "ema", "ma"])
def test_resume_after_interrupt_gives_identical_weights(tmp_path, grad_filter):
    cfg = TrainConfig(steps=30, lr=3e-3, warmup_steps=5, grad_filter=grad_filter, ma_window=4, log_every=5,
                      checkpoint_every=10)
    task = ModularArithmetic(p=P, frac_train=0.5)
    reference = _model()
    ref = train(reference, task, cfg, tmp_path / "ref", progress=False)

    with pytest.raises(KeyboardInterrupt):
        train(_model(), Interrupting(24, p=P, frac_train=0.5), cfg, tmp_path / "run", progress=False)
    resumed = _model(seed=123)  # different init: everything must come from the checkpoint
    out = train(resumed, task, cfg, tmp_path / "run", progress=False)

    assert out.resumed_from == 20
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [r["step"] for r in ref.history] == list(range(0, 31, 5))
    assert lines[-1]["test_loss"] == ref.history[-1]["test_loss"]
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [10, 20, 30]


def test_resume_with_other_config_refused(tmp_path):
    task = ModularArithmetic(p=P, frac_train=0.5)
    train(_model(), task, TrainConfig(steps=4, checkpoint_every=2), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="another configuration.*lr"):
        train(_model(), task, TrainConfig(steps=8, lr=5e-3, checkpoint_every=2), tmp_path, progress=False)
    # more steps with the same settings continues
    assert train(_model(), task, TrainConfig(steps=6, checkpoint_every=2), tmp_path, progress=False).resumed_from == 4


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    task = ModularArithmetic(p=P, frac_train=0.5)
    train(_model(), task, TrainConfig(steps=2, checkpoint_every=1), tmp_path, progress=False)
    (tmp_path / "checkpoints" / "resume.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        train(_model(), task, TrainConfig(steps=4, checkpoint_every=1), tmp_path, progress=False)


class Exploding(ModularArithmetic):
    def loss(self, model, batch):
        return super().loss(model, batch) * float("nan")


def test_nan_loss_stops_with_message(tmp_path):
    with pytest.raises(TrainingDivergedError, match="loss became nan at step 0"):
        train(_model(), Exploding(p=P), TrainConfig(steps=3), tmp_path, progress=False)


@pytest.mark.parametrize("kwargs", [dict(steps=0), dict(lr=0.0), dict(weight_decay=-1.0), dict(betas=(0.9, 1.0)),
                                    dict(grad_filter="sma"), dict(log_every=0)])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


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
    from mi_toolkit.induction import InductionTask, make_induction_model

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        weights = []
        for _ in range(2):
            model = make_induction_model(seed=0)
            train(model, InductionTask(), TrainConfig(steps=30, lr=1e-2, weight_decay=0.01, warmup_steps=5,
                                                     log_every=1000, checkpoint_every=1000), progress=False)
            weights.append(model.state_dict())
    finally:
        torch.set_num_threads(threads)
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    assert not torch.are_deterministic_algorithms_enabled()  # the global setting is restored
