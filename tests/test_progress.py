import pytest
import torch

from mi_toolkit import ModularArithmetic, make_grokking_model
from mi_toolkit.fast_forward import final_position_logits
from mi_toolkit.progress import (
    estimate_phases,
    evaluate_modular,
    excluded_loss,
    excluded_loss_per_frequency,
    gini,
    restricted_loss,
    sum_squared_weights,
)
from mi_toolkit.tasks import last_token_loss


def _gini_mean_difference(x):
    # Independent formula: mean absolute difference over all pairs / (2 * mean).
    x = x.double()
    return float((x[:, None] - x[None, :]).abs().mean() / (2 * x.mean()))


@pytest.mark.parametrize("seed", range(3))
def test_gini_matches_mean_difference_formula(seed):
    x = torch.rand(50, generator=torch.Generator().manual_seed(seed)) ** 3
    assert gini(x) == pytest.approx(_gini_mean_difference(x), abs=1e-9)


def test_gini_extremes():
    assert gini(torch.ones(10)) == pytest.approx(0.0, abs=1e-12)
    assert gini(torch.tensor([0.0] * 9 + [1.0])) == pytest.approx(0.9)


@pytest.fixture(scope="module")
def small():
    p = 13
    model = make_grokking_model(p, d_model=32, d_head=8, d_mlp=48, freeze_biases=False, seed=3)
    for param in model.parameters():
        param.data += 0.1 * torch.randn_like(param)
    return model, ModularArithmetic(p=p, frac_train=0.5, seed=1)


def test_restricted_loss_keeping_everything_is_the_full_loss(small):
    model, task = small
    every = list(range(1, (task.p - 1) // 2 + 1))
    logits = model(task.tokens)[:, -1]
    for split, idx in (("test", task.test_indices), ("train", task.train_indices)):
        full = last_token_loss(logits[idx], task.labels[idx]).item()
        assert restricted_loss(model, task, every, components="all", split=split) == pytest.approx(full, rel=1e-5)
    # Removing nothing leaves the train loss unchanged.
    full_train = last_token_loss(logits[task.train_indices], task.train_labels).item()
    assert excluded_loss(model, task, []) == pytest.approx(full_train, rel=1e-6)


def test_excluded_loss_matches_manual_hook(small):
    """Independent computation: edit hook_post with a forward hook and run the full model."""
    model, task = small
    p, k = task.p, 2
    ab = (task.tokens[:, 0] + task.tokens[:, 1]).double()
    u = torch.stack([torch.cos(2 * torch.pi * k * ab / p), torch.sin(2 * torch.pi * k * ab / p)], 1)
    u = (u / u.norm(dim=0)).float()

    def remove(post, hook):
        last = post[:, -1]
        post[:, -1] = last - u @ (u.T @ last)
        return post

    logits = model.run_with_hooks(task.tokens, fwd_hooks=[("blocks.0.mlp.hook_post", remove)])[:, -1]
    expected = last_token_loss(logits[task.train_indices], task.train_labels).item()
    assert excluded_loss(model, task, [k]) == pytest.approx(expected, rel=1e-5)
    assert excluded_loss_per_frequency(model, task, [k])[k] == pytest.approx(expected, rel=1e-5)


def test_evaluate_modular_against_full_forward(small):
    model, task = small
    out = evaluate_modular(model, task)
    logits = model(task.tokens)[:, -1]
    acc = (logits.argmax(-1) == task.labels).float()
    assert out["test_acc"] == pytest.approx(acc[task.test_indices].mean().item())
    assert out["train_loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits[task.train_indices].double(), task.train_labels).item(), rel=1e-6)
    assert out["weight_norm"] == pytest.approx(sum(float((p.detach()**2).sum()) for p in model.parameters()), rel=1e-6)
    assert sum_squared_weights(model) == out["weight_norm"]


def test_unknown_components_and_split_rejected(small):
    model, task = small
    with pytest.raises(ValueError, match="components"):
        restricted_loss(model, task, [1], components="both")
    with pytest.raises(ValueError, match="split"):
        excluded_loss(model, task, [1], split="val")


def test_estimate_phases_on_synthetic_history():
    history = [dict(step=s, train_acc=min(1.0, s / 1000), test_acc=0.0 if s < 5000 else min(1.0, (s - 4000) / 2000),
                    restricted_loss=1.0 if s < 7000 else 0.05) for s in range(0, 10001, 500)]
    phases = estimate_phases(history)
    assert (phases.memorisation_end, phases.cleanup_start, phases.cleanup_end) == (1000, 5000, 7000)
    assert estimate_phases(history[:3]).cleanup_start is None
