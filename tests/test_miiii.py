"""Multi-task modular arithmetic (miiii): labels, the weighted loss, the omega count, and the run directory."""

import math

import torch

import mi_toolkit as mt
from mi_toolkit.analysis.miiii import active_frequencies, neuron_spectrum, omega
from mi_toolkit.tasks.multitask import MultiTaskModular, primes_below


def test_labels_and_blocks():
    task = MultiTaskModular(p=11, frac_train=0.5, seed=1)
    assert task.primes == [2, 3, 5, 7] == primes_below(11)
    assert [(q, s, e) for q, s, e in task.blocks] == [(2, 0, 2), (3, 2, 5), (5, 5, 10), (7, 10, 17)]
    for row in (0, 17, 120):
        x0, x1 = task.tokens[row, :2].tolist()
        assert task.labels[row].tolist() == [(x0 + 11 * x1) % q for q in (2, 3, 5, 7)]


def test_loss_weights_each_task_by_one_over_log_q():
    task = MultiTaskModular(p=7, frac_train=0.5)
    model = mt.make_grokking_model(7, d_model=16, d_head=4, d_mlp=32, d_vocab_out=task.d_vocab_out)
    tokens, labels = task.train_batch(0)
    logits = model(tokens)[:, -1].double()
    expected = sum(torch.nn.functional.cross_entropy(logits[:, s:e], labels[:, i]) / math.log(q)
                   for i, (q, s, e) in enumerate(task.blocks))
    assert abs(task.loss(model, (tokens, labels)).item() - expected.item()) < 1e-6 * expected.item()
    metrics = task.evaluate(model)
    assert metrics["test_acc"] == min(metrics[f"test_acc_q{q}"] for q in task.primes)


def test_omega_counts_planted_frequencies():
    spectrum = torch.rand(13, 13, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.1
    spectrum[0, 0] = 100.0  # the mean: never counted
    spectrum[3, 0] = spectrum[0, 5] = spectrum[4, 4] = 10.0
    active = active_frequencies(spectrum, k=2.0)
    assert active.sum() == 3 and active[3, 0] and active[0, 5] and active[4, 4]


def test_a_miiii_run_directory(tmp_path):
    run = mt.run_miiii(tmp_path / "run", mt.MiiiiConfig(p=11, steps=40, checkpoint_every=20), progress=False)
    a = run.analysis
    assert set(a["task_grokked_at_step"]) == {"2", "3", "5", "7"} and a["stop_reason"] == "step budget"
    assert all("omega_k2" in r for r in run.history if r["step"] in (0, 20, 40))
    spectrum = neuron_spectrum(run.model, run.task)
    assert omega(run.model, run.task)["omega_k2"] == int(active_frequencies(spectrum, 2.0).sum())
    loaded = mt.load_run(tmp_path / "run")
    assert loaded.task.primes == [2, 3, 5, 7] and torch.equal(loaded.task.train_indices, run.task.train_indices)
    assert "Every task" in (tmp_path / "run" / "report.html").read_text()


def test_the_miiii_recipe_is_muon_on_a_cosine_and_overrides_apply():
    recipe = mt.MiiiiConfig().train_config()
    assert (recipe.optimizer, recipe.muon_lr, recipe.weight_decay, recipe.lr_schedule, recipe.steps) == \
        ("muon", 0.08, 0.2, "cosine", 30_000)
    assert mt.MiiiiConfig().frac_train == 0.8
    mine = mt.MiiiiConfig(steps=500, muon_lr=0.04, weight_decay=0.1).train_config()
    assert (mine.steps, mine.muon_lr, mine.weight_decay, mine.lr_schedule) == (500, 0.04, 0.1, "cosine")
    assert mt.MiiiiConfig(recipe="paper").train_config().optimizer == "adamw"
    assert mt.GroupsConfig().train_config().optimizer == "adamw"  # the change is miiii's own
