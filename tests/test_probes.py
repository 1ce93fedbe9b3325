"""Linear probes: the ridge solve against numpy, planted structure found and random labels at chance, ignored labels,
directions, saving, and probes per layer with their baselines on a tiny transformer."""

import inspect

import numpy as np
import pytest
import torch

import mi_toolkit as mt
from mi_toolkit.analysis.probes import (
    LayerProbes,
    Probe,
    ProbeAccuracy,
    ProbeConfig,
    fit_probe,
    load_probe,
    probe_layers,
)
from mi_toolkit.core import CheckpointError, get_act_name, save_tensors

METHODS = ["ridge", "adamw"]


def planted(n: int = 3000, d: int = 32, outputs: int = 6, classes: int = 3, *, seed: int = 0):
    """Activations that add one mean vector per (output, class) plus noise: every label is linearly readable."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n, outputs), generator=generator)
    means = torch.randn(outputs, classes, d, generator=generator)
    acts = means[torch.arange(outputs), labels].sum(1) + 0.5 * torch.randn(n, d, generator=generator)
    return acts, labels


def test_public_names():
    assert mt.probes.fit_probe is fit_probe and mt.probes.probe_layers is probe_layers


def test_ridge_matches_an_independent_solve_per_output_mask():
    """Each output is fitted on its own labelled rows: numpy's lstsq on the centred rows stacked over sqrt(lambda) I."""
    acts, labels = planted(300, 8, 4, 3, seed=1)
    generator = torch.Generator().manual_seed(2)
    labels[torch.rand(labels.shape, generator=generator) < 0.2] = -1  # a different mask for every output
    labels[:5] = -1  # and rows no output uses
    ridge = 0.05
    probe = fit_probe(acts, labels, 3, ProbeConfig(ridge=ridge))
    x_all, y_all = acts.double().numpy(), labels.numpy()
    for o in range(4):
        x, y = x_all[y_all[:, o] >= 0], np.eye(3)[y_all[y_all[:, o] >= 0, o]]
        mean = x.mean(0)
        centred = x - mean
        lam = ridge * (centred**2).sum() / 8
        W = np.linalg.lstsq(np.vstack([centred, np.sqrt(lam) * np.eye(8)]), np.vstack([y, np.zeros((8, 3))]),
                            rcond=None)[0]
        b = y.mean(0) - mean @ W
        np.testing.assert_allclose(probe.W[:, o].numpy(), W, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(probe.b[o].numpy(), b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_recovers_planted_structure_and_is_at_chance_on_random_labels(method):
    acts, labels = planted()
    config = ProbeConfig(method=method)
    probe = fit_probe(acts[:2000], labels[:2000], 3, config)
    held_out = probe.accuracy(acts[2000:], labels[2000:])
    assert held_out.overall > 0.95 and (held_out.per_output > 0.9).all()
    assert held_out.counts.tolist() == [1000] * 6
    random = torch.randint(0, 3, labels.shape, generator=torch.Generator().manual_seed(5))
    chance = fit_probe(acts[:2000], random[:2000], 3, config).accuracy(acts[2000:], random[2000:]).overall
    assert abs(chance - 1 / 3) < 0.04  # 6000 held-out entries: one standard deviation is 0.006


@pytest.mark.parametrize("method", METHODS)
def test_ignored_labels_take_no_part(method):
    acts, labels = planted(600, 16, 3, 3)
    labels[:100] = -1
    config = ProbeConfig(method=method, epochs=2)
    probe = fit_probe(acts, labels, 3, config)
    moved = acts.clone()
    moved[:100] = 1e3 * torch.randn(100, 16)  # features of rows no output uses
    again = fit_probe(moved, labels, 3, config)
    torch.testing.assert_close(again.W, probe.W, rtol=0, atol=0)
    torch.testing.assert_close(again.b, probe.b, rtol=0, atol=0)
    accuracy = probe.accuracy(moved, labels)
    assert accuracy.counts.tolist() == [500] * 3  # ignored entries are not counted either


def test_ridge_outputs_with_ignored_entries_fit_as_if_alone():
    """An ignored entry is not a zero target: output 0 fits as it would from its own labelled rows only."""
    acts, labels = planted(400, 8, 2, 3, seed=3)
    labels[torch.arange(400) % 3 == 0, 0] = -1
    together = fit_probe(acts, labels, 3)
    rows = labels[:, 0] >= 0
    alone = fit_probe(acts[rows], labels[rows, :1], 3)
    torch.testing.assert_close(together.W[:, :1], alone.W, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together.b[:1], alone.b, rtol=1e-4, atol=1e-5)


def test_directions_are_unit_and_contrast_is_the_weight_difference():
    acts, labels = planted(500, 16, 4, 3)
    probe = fit_probe(acts, labels, 3)
    directions = probe.directions()
    assert directions.shape == (4, 3, 16)
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(4, 3))
    contrast = probe.contrast(1, 2)
    torch.testing.assert_close(contrast.norm(dim=-1), torch.ones(4))
    difference = (probe.W[:, :, 1] - probe.W[:, :, 2]).T
    torch.testing.assert_close(contrast, difference / difference.norm(dim=-1, keepdim=True))
    # Moving along the contrast raises class 1's score against class 2's.
    gap = lambda x: (probe.logits(x)[..., 1] - probe.logits(x)[..., 2])
    assert gap(acts[:1] + contrast[0])[0, 0] > gap(acts[:1])[0, 0]
    with pytest.raises(ValueError, match="class 3"):
        probe.contrast(3, 0)


def test_accuracy_on_a_subset_of_entries():
    acts, labels = planted(500, 16, 4, 3)
    probe = fit_probe(acts[:300], labels[:300], 3, ProbeConfig(ridge=10.0))
    predicted = probe.predict(acts)
    occupied = labels != 0
    expected = (predicted == labels)[occupied].float().mean().item()
    assert probe.accuracy(acts, labels, where=occupied).overall == pytest.approx(expected)
    assert probe.accuracy(acts, labels).among([1, 2]).overall == pytest.approx(expected)
    per_output = [(predicted[:, o] == labels[:, o])[occupied[:, o]].float().mean().item() for o in range(4)]
    assert probe.accuracy(acts, labels, where=occupied).per_output.tolist() == pytest.approx(per_output)
    empty = ProbeAccuracy.from_predictions(predicted[:0], labels[:0], 3)
    assert empty.per_output.isnan().all()


def test_save_and_load(tmp_path):
    acts, labels = planted(200, 8, 2, 3)
    probe = fit_probe(acts, labels, 3, hook_name="blocks.0.hook_resid_post")
    loaded = load_probe(probe.save(tmp_path / "probe.safetensors"))
    assert loaded.hook_name == probe.hook_name
    torch.testing.assert_close(loaded.W, probe.W, rtol=0, atol=0)
    torch.testing.assert_close(Probe.load(tmp_path / "probe.safetensors").b, probe.b, rtol=0, atol=0)
    save_tensors(tmp_path / "other.safetensors", {"x": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="not a probe"):
        load_probe(tmp_path / "other.safetensors")


@pytest.fixture(scope="module")
def token_model(make_tiny_transformer):
    """A tiny transformer wide enough (d_model 32) that its embedding separates the 20 tokens linearly, and 80
    sequences labelled by ``token % 3`` and ``token < 10`` at every position."""
    model = make_tiny_transformer(seed=0, d_model=32, d_head=8)
    tokens = torch.randint(0, 20, (80, 8), generator=torch.Generator().manual_seed(0))
    labels = torch.stack([tokens % 3, (tokens < 10).long()], dim=-1)
    return model, tokens, labels


def test_probe_layers_reads_a_planted_label_beside_its_baselines(token_model):
    model, tokens, labels = token_model
    result = probe_layers(model, tokens, labels, 3)
    embed = get_act_name("resid_pre", 0)
    assert result.hook_names == (embed, get_act_name("resid_post", 0), get_act_name("resid_post", 1))
    assert result.held_out.sum() == 16  # 20% of the sequences
    assert result.test[embed].overall > 0.95 > result.majority.overall
    assert result.test[embed].counts.tolist() == [16 * 8] * 2
    assert set(result.control) == set(result.random_model) == set(result.hook_names)
    # The control task labels token types too, so a probe of the token embedding memorises it as well.
    assert result.control[embed].overall > 0.9
    assert result.random_model[embed].overall > 0.9
    rows = result.table()
    assert [row["hook_name"] for row in rows] == list(result.hook_names)
    for row in rows:
        assert row["selectivity"] == pytest.approx(row["test"] - row["control"])
        assert all(np.isfinite(row[key]) for key in ("train", "test", "majority", "control", "random_model"))
    # Probes read activations collected elsewhere the same way.
    acts = mt.collect_activations(model, embed, tokens[result.held_out])
    labels_held_out = labels[result.held_out].reshape(-1, 2)
    assert result.probes[embed].accuracy(acts, labels_held_out).overall == pytest.approx(result.test[embed].overall)


def test_probe_layers_positions_split_and_optional_baselines(token_model):
    model, tokens, labels = token_model
    held_out = torch.arange(80) % 4 == 0
    result = probe_layers(model, tokens, labels, 3, hook_names=[get_act_name("resid_post", 1)], positions=[2, 5],
                          held_out=held_out, control=False, random_model=False)
    assert result.control == {} and result.random_model == {} and result.selectivity() == {}
    assert torch.equal(result.held_out, held_out)
    assert result.test[get_act_name("resid_post", 1)].counts.tolist() == [20 * 2] * 2
    assert np.isnan(result.table()[0]["control"])


def test_same_seed_same_numbers(token_model):
    model, tokens, labels = token_model
    config = ProbeConfig(method="adamw", epochs=2, seed=3)
    kwargs = {"hook_names": [get_act_name("resid_post", 0)]}
    first, second = (probe_layers(model, tokens, labels, 3, config, **kwargs) for _ in range(2))
    assert first.table() == second.table()
    name = get_act_name("resid_post", 0)
    torch.testing.assert_close(first.probes[name].W, second.probes[name].W, rtol=0, atol=0)
    other = probe_layers(model, tokens, labels, 3, ProbeConfig(method="adamw", epochs=2, seed=4), **kwargs)
    assert not torch.equal(other.held_out, first.held_out)


def unchecked(fn):
    """``fn`` without the test-time jaxtyping wrapper, which would reject mismatched shapes before the function's
    own ValueError (both fire before any work)."""
    return inspect.unwrap(fn)


@pytest.mark.parametrize("case", ["labels shape", "label too large", "label below -1", "unknown hook", "no split",
                                  "float labels", "positions", "no training labels", "token out of vocab"])
def test_bad_inputs_raise_before_the_forward_pass(token_model, monkeypatch, case):
    model, tokens, labels = token_model

    def no_forward(*args, **kwargs):
        raise AssertionError("ran the model before checking its inputs")

    monkeypatch.setattr("mi_toolkit.analysis.probes.layers.run_until", no_forward)
    kwargs = {}
    if case == "labels shape":
        labels = labels[:, :-1]
    elif case == "label too large":
        labels = labels + 1
    elif case == "label below -1":
        labels = labels - 2
    elif case == "unknown hook":
        kwargs["hook_names"] = ["blocks.0.hook_resid_psot"]
    elif case == "no split":
        kwargs["held_out"] = 0.0
    elif case == "float labels":
        labels = labels.float()
    elif case == "positions":
        kwargs["positions"] = [9]
    elif case == "no training labels":
        labels = labels.clone()
        labels[:, :, 1] = -1
    elif case == "token out of vocab":
        tokens = tokens + 20
    with pytest.raises(ValueError):
        unchecked(probe_layers)(model, tokens, labels, 3, **kwargs)


@pytest.mark.parametrize("case", ["rows", "label too large", "unlabelled output", "one class", "bool labels"])
def test_fit_probe_rejects_bad_inputs(case):
    acts, labels = planted(50, 4, 2, 3)
    n_classes = 3
    if case == "rows":
        acts = acts[:-1]
    elif case == "label too large":
        labels[0, 0] = 3
    elif case == "unlabelled output":
        labels[:, 1] = -1
    elif case == "one class":
        n_classes = 1
    elif case == "bool labels":
        labels = labels > 0
    with pytest.raises(ValueError):
        unchecked(fit_probe)(acts, labels, n_classes)


@pytest.mark.parametrize("fields", [{"ridge": -1.0}, {"lr": 0.0}, {"weight_decay": -0.1}, {"epochs": 0},
                                    {"batch_size": 0}])
def test_config_validation(fields):
    with pytest.raises(ValueError):
        ProbeConfig(**fields)


def test_config_rejects_an_unknown_method():
    with pytest.raises((ValueError, TypeError)):  # TypeError: the test-time type checker reads the Literal first
        ProbeConfig(method="svm")


def test_layer_probes_is_exported():
    assert mt.analysis.LayerProbes is LayerProbes


def test_interval_matches_the_binomial_one_for_independent_rows():
    gen = torch.Generator().manual_seed(0)
    n, p = 4000, 0.9
    labels = torch.randint(0, 3, (n, 1), generator=gen)
    right = torch.rand(n, 1, generator=gen) < p
    predicted = torch.where(right, labels, (labels + 1) % 3)
    accuracy = ProbeAccuracy.from_predictions(predicted, labels, 3, groups=torch.arange(n))
    low, high = accuracy.interval(level=0.95, n_bootstrap=2000)
    acc = accuracy.overall
    half = 1.959964 * (acc * (1 - acc) / n) ** 0.5  # the normal approximation, computed independently
    assert low < acc < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert (acc - low) == pytest.approx(half, rel=0.25) and (high - acc) == pytest.approx(half, rel=0.25)


def test_interval_resamples_whole_groups():
    # 100 sequences of 20 rows, each sequence all right or all wrong: the interval is that of 100 draws, not 2000.
    gen = torch.Generator().manual_seed(1)
    seq_right = torch.rand(100, generator=gen) < 0.8
    labels = torch.zeros(2000, 2, dtype=torch.long)
    predicted = (~seq_right).long().repeat_interleave(20)[:, None].expand(-1, 2)
    groups = torch.arange(100).repeat_interleave(20)
    grouped = ProbeAccuracy.from_predictions(predicted, labels, 2, groups=groups)
    rows = ProbeAccuracy.from_predictions(predicted, labels, 2, groups=torch.arange(2000))
    acc = seq_right.double().mean().item()
    assert grouped.overall == pytest.approx(acc) == pytest.approx(rows.overall)
    width = lambda a: a.interval()[1] - a.interval()[0]  # noqa: E731
    assert width(grouped) == pytest.approx(2 * 1.96 * (acc * (1 - acc) / 100) ** 0.5, rel=0.2)
    assert width(grouped) > 3 * width(rows)  # sqrt(20) ~ 4.5 in expectation
    assert grouped.interval(seed=3) == grouped.interval(seed=3)


def test_interval_among_classes_and_errors():
    gen = torch.Generator().manual_seed(2)
    labels = torch.randint(-1, 3, (600, 4), generator=gen)
    predicted = torch.randint(0, 3, (600, 4), generator=gen)
    groups = torch.arange(600) // 6
    occupied = ProbeAccuracy.from_predictions(predicted, labels, 3, groups=groups).among([1, 2])
    direct = ProbeAccuracy.from_predictions(predicted, labels, 3, where=labels > 0, groups=groups)
    assert occupied.overall == pytest.approx(direct.overall)
    assert occupied.interval() == direct.interval()
    assert torch.equal(occupied.group_counts, direct.group_counts)
    with pytest.raises(ValueError, match="groups="):
        ProbeAccuracy.from_predictions(predicted, labels, 3).interval()
    with pytest.raises((ValueError, TypeError), match="groups"):  # jaxtyping's check, where installed, comes first
        ProbeAccuracy.from_predictions(predicted, labels, 3, groups=groups[:10])
    with pytest.raises(ValueError, match="level"):
        direct.interval(level=1.5)


def test_probe_layers_reports_intervals_over_held_out_sequences(token_model):
    model, tokens, labels = token_model
    result = probe_layers(model, tokens, labels, 3, hook_names=[get_act_name("resid_post", 1)], control=False,
                          random_model=False)
    row = result.table()[0]
    assert row["test_low"] <= row["test"] <= row["test_high"]
    assert len(result.test[row["hook_name"]].group_counts) == int(result.held_out.sum())
