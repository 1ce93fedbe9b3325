"""Patching metrics against direct computations from the logits, and the positions each one declares it reads."""

import pytest
import torch
from transformer_lens.utilities import lm_cross_entropy_loss

from mi_toolkit import metrics
from mi_toolkit.core.losses import next_token_loss

# The engine's parser of a metric's declared positions, the thing these declarations feed (no public name).
from mi_toolkit.analysis.patching._sweep import read_positions

D_VOCAB = 20  # the tiny transformers' vocabulary (conftest.py)


def test_metrics_against_direct_computation(tiny_mlp_ln_model, tiny_tokens):
    model = tiny_mlp_ln_model
    clean, corrupted = tiny_tokens
    clean_logits, corrupted_logits = model(clean), model(corrupted)
    rows = torch.arange(3)
    answer, wrong = clean[:, -1], corrupted[:, -1]
    expected = (clean_logits[rows, -1, answer] - clean_logits[rows, -1, wrong]).mean()
    torch.testing.assert_close(metrics.logit_diff(answer, wrong)(clean_logits), expected)
    torch.testing.assert_close(metrics.logit_diff(3, 4, positions=2)(clean_logits),
                               (clean_logits[:, 2, 3] - clean_logits[:, 2, 4]).mean())
    torch.testing.assert_close(metrics.answer_loss(answer)(clean_logits),
                               torch.nn.functional.cross_entropy(clean_logits[:, -1], answer))
    torch.testing.assert_close(metrics.probability(answer)(clean_logits),
                               clean_logits[rows, -1].softmax(-1)[rows, answer].mean())
    torch.testing.assert_close(metrics.loss(clean)(clean_logits), model(clean, return_type="loss"))
    per_token = model(clean, return_type="loss", loss_per_token=True)  # (batch, pos - 1)
    torch.testing.assert_close(metrics.loss(clean, positions=slice(2, None))(clean_logits), per_token[:, 2:].mean())
    kl = metrics.kl_to_clean(clean_logits)
    assert kl(clean_logits).abs() < 1e-6
    expected_kl = torch.nn.functional.kl_div(corrupted_logits[:, -1].log_softmax(-1), clean_logits[:, -1].log_softmax(-1),
                                             log_target=True, reduction="batchmean")
    torch.testing.assert_close(kl(corrupted_logits), expected_kl)
    normalized = metrics.normalized_logit_diff(answer, wrong, clean_logits, corrupted_logits)
    assert normalized(clean_logits).item() == pytest.approx(1.0, abs=1e-6)
    assert normalized(corrupted_logits).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="cannot normalise"):
        metrics.normalized(metrics.loss(clean), clean_logits, clean_logits)
    distance = metrics.normalized_distance(metrics.logit_diff(answer, wrong), clean_logits, corrupted_logits)
    assert distance(clean_logits).item() == pytest.approx(0.0, abs=1e-6)
    assert distance(corrupted_logits).item() == pytest.approx(1.0, abs=1e-6)
    mixed = (clean_logits + corrupted_logits) / 2
    assert distance(mixed).item() == pytest.approx(1 - normalized(mixed).item(), abs=1e-6)


def test_next_token_loss_against_transformer_lens(tiny_mlp_ln_model, tiny_tokens):
    """Every position, shared indices and a per-sequence mask, values and gradients, against TransformerLens's own
    per-token loss (an independent computation: log-softmax and a gather)."""
    clean, _ = tiny_tokens
    logits = tiny_mlp_ln_model(clean).detach()
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 1, 0, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    for positions, select in [(None, lambda t: t.mean()), ([1, 3], lambda t: t[:, [1, 3]].mean()),
                              (mask, lambda t: t[mask].mean())]:
        ours = logits.clone().requires_grad_()
        theirs = logits.clone().requires_grad_()
        loss = next_token_loss(ours, clean, positions)
        expected = select(lm_cross_entropy_loss(theirs, clean, per_token=True))
        torch.testing.assert_close(loss, expected)
        loss.backward()
        expected.backward()
        torch.testing.assert_close(ours.grad, theirs.grad)
        assert ours.grad[:, -1].abs().max() == 0  # the last position predicts nothing


def test_metrics_declare_exactly_the_positions_they_read(tiny_tokens):
    # Independent check of each declaration: the positions where the metric's gradient is non-zero.
    clean, corrupted = tiny_tokens
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 6, D_VOCAB, generator=gen, requires_grad=True)
    other = torch.randn(3, 6, D_VOCAB, generator=gen)
    answer, wrong = clean[:, -1], corrupted[:, -1]
    cases = [
        metrics.logit_diff(answer, wrong), metrics.logit_diff(3, 4, positions=2),
        metrics.answer_loss(answer, positions=1), metrics.probability(answer), metrics.loss(clean),
        metrics.loss(clean, positions=slice(2, 4)), metrics.loss(clean, positions=[0, 3]),
        metrics.kl_to_clean(other, positions=[1, 4]), metrics.kl_to_clean(other, None),
        metrics.normalized(metrics.loss(clean, positions=[1]), logits.detach(), other),
        metrics.normalized_distance(metrics.loss(clean, positions=[1]), logits.detach(), other),
    ]
    for metric in cases:
        (grad,) = torch.autograd.grad(metric(logits), logits)
        read = grad.abs().sum(dim=(0, 2)) > 0
        declared = read_positions(metric, 6)
        declared = torch.ones(6, dtype=torch.bool) if declared is None else declared
        assert torch.equal(read, declared), (metric.positions, read)


def test_old_pos_keyword_still_works_and_warns():
    logits = torch.randn(2, 5, D_VOCAB, generator=torch.Generator().manual_seed(4))
    with pytest.warns(DeprecationWarning, match=r"logit_diff\(pos=\.\.\.\) is now logit_diff\(positions=\.\.\.\)"):
        old = metrics.logit_diff(3, 4, pos=2)
    new = metrics.logit_diff(3, 4, positions=2)
    assert old.positions == new.positions == 2
    torch.testing.assert_close(old(logits), new(logits), rtol=0, atol=0)
    torch.testing.assert_close(old(logits), (logits[:, 2, 3] - logits[:, 2, 4]).mean())
    with pytest.raises(TypeError, match="both 'pos' and its new name 'positions'"):
        metrics.logit_diff(3, 4, pos=2, positions=1)


def test_every_metric_is_the_mean_of_its_per_example_values():
    gen = torch.Generator().manual_seed(0)
    logits, clean = torch.randn(4, 5, 7, generator=gen), torch.randn(4, 5, 7, generator=gen)
    tokens = torch.randint(0, 7, (4, 5), generator=gen)
    answers, other = tokens[:, -1], (tokens[:, -1] + 1) % 7
    factories = [
        metrics.logit_diff(answers, other), metrics.probability(answers), metrics.answer_loss(answers),
        metrics.loss(tokens), metrics.loss(tokens, positions=[1, 3]), metrics.kl_to_clean(clean),
        metrics.kl_to_clean(clean, positions=None),
        metrics.normalized(metrics.logit_diff(answers, other), clean, torch.zeros_like(clean)),
        metrics.normalized_distance(metrics.logit_diff(answers, other), clean, torch.zeros_like(clean)),
    ]
    for metric in factories:
        values = metric.per_example(logits)
        assert values.shape == (4,)
        torch.testing.assert_close(values.mean(), metric(logits))
    # Independent per-example values for two of them.
    torch.testing.assert_close(factories[0].per_example(logits), logits[:, -1].gather(1, answers[:, None])[:, 0]
                               - logits[:, -1].gather(1, other[:, None])[:, 0])
    ce = torch.stack([torch.nn.functional.cross_entropy(logits[b, :-1], tokens[b, 1:]) for b in range(4)])
    torch.testing.assert_close(factories[3].per_example(logits), ce)
