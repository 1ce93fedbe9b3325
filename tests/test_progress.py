"""Progress measures of grokking against independent computations: Gini, restricted and excluded loss, phases."""

import pytest
import torch

import mi_toolkit as mt
from mi_toolkit.analysis.progress import (
    estimate_phases,
    evaluate_modular,
    excluded_loss,
    excluded_loss_per_frequency,
    gini,
    grokking_measures,
    restricted_loss,
    sum_squared_weights,
)


def last_token_loss(logits, labels):
    """Cross-entropy of last-position logits in float64, as the progress measures compute it."""
    return mt.core.losses.answer_loss(logits, labels, dtype=torch.float64)


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


def test_restricted_loss_keeping_everything_is_the_full_loss(grokking_model_and_task):
    model, task = grokking_model_and_task
    every = list(range(1, (task.p - 1) // 2 + 1))
    logits = model(task.tokens)[:, -1]
    for split, idx in (("test", task.test_indices), ("train", task.train_indices)):
        full = last_token_loss(logits[idx], task.labels[idx]).item()
        assert restricted_loss(model, task, every, components="all", split=split) == pytest.approx(full, rel=1e-5)
    # Removing nothing leaves the train loss unchanged.
    full_train = last_token_loss(logits[task.train_indices], task.train_labels).item()
    assert excluded_loss(model, task, []) == pytest.approx(full_train, rel=1e-6)


def test_excluded_loss_matches_manual_hook(grokking_model_and_task):
    """Independent computation: edit hook_post with a forward hook and run the full model."""
    model, task = grokking_model_and_task
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


def test_evaluate_modular_against_full_forward(grokking_model_and_task):
    model, task = grokking_model_and_task
    out = evaluate_modular(model, task)
    logits = model(task.tokens)[:, -1]
    acc = (logits.argmax(-1) == task.labels).float()
    assert out["test_acc"] == pytest.approx(acc[task.test_indices].mean().item())
    assert out["train_loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits[task.train_indices].double(), task.train_labels).item(), rel=1e-6)
    assert out["weight_norm"] == pytest.approx(sum(float((p.detach()**2).sum()) for p in model.parameters()), rel=1e-6)
    assert sum_squared_weights(model) == out["weight_norm"]


def test_grokking_measures_complete_the_task_evaluation(grokking_model_and_task):
    # The task reports losses and accuracies only; the measures of grokking come from grokking_measures.
    model, task = grokking_model_and_task
    evaluation = task.evaluate(model)
    assert set(evaluation) == {"train_loss", "test_loss", "train_acc", "test_acc"}
    measures = grokking_measures(model, task)
    assert set(measures) == {"gini_embed", "gini_unembed", "weight_norm"}
    basis = mt.fourier.fourier_basis(task.p)
    with torch.no_grad():
        embed_norms = (basis @ model.W_E[: task.p]).norm(dim=1)  # per Fourier component over the inputs
        unembed_norms = (model.blocks[0].mlp.W_out @ model.W_U[:, : task.p] @ basis.T).norm(dim=0)  # over outputs
    assert measures["gini_embed"] == pytest.approx(gini(embed_norms), abs=1e-6)
    assert measures["gini_unembed"] == pytest.approx(gini(unembed_norms), abs=1e-6)
    assert measures["weight_norm"] == sum_squared_weights(model)
    assert evaluate_modular(model, task) == {**evaluation, **measures}


def test_unknown_components_and_split_rejected(grokking_model_and_task):
    model, task = grokking_model_and_task
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


def test_the_loss_plot_names_only_the_phases_wide_enough_to_read():
    # Memorisation over by step 50 of 3,200 (a small group's run): its band is drawn but not named, so its name does
    # not print over circuit formation's.
    history = [{"step": s, "train_loss": 1.0, "test_loss": 2.0} for s in range(0, 3201, 10)]
    fig = mt.plot.loss_curves(history, {"memorisation_end": 50, "cleanup_start": 2720, "cleanup_end": 3100})
    assert len(fig.layout.shapes) == 3
    assert [a.text for a in fig.layout.annotations] == ["circuit formation", "cleanup"]
    wide = mt.plot.loss_curves(history, {"memorisation_end": 800, "cleanup_start": 2720, "cleanup_end": 3100})
    assert [a.text for a in wide.layout.annotations] == ["memorisation", "circuit formation", "cleanup"]
