"""Model editing: the closed forms against independent least-squares solves, reversible edits, ROME and MEMIT end to
end on the shipped fact model, and the CounterFact scores recomputed by hand."""

import pytest
import torch

import mi_toolkit as mt
from mi_toolkit.analysis.edits import edit_scores, summarise_scores
from mi_toolkit.interventions.editing import memit, rome, second_moments
from mi_toolkit.interventions.rank_one import WeightEdit, memit_update, rank_one_update
from mi_toolkit.tasks.facts import PAD


def _problem(seed: int, d_mlp: int = 12, d_model: int = 5, n_keys: int = 200):
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(n_keys, d_mlp, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 3, d_mlp,
                                                                                          dtype=torch.float64)
    W = torch.randn(d_mlp, d_model, generator=gen, dtype=torch.float64)
    k_star = torch.randn(d_mlp, generator=gen, dtype=torch.float64)
    v_star = torch.randn(d_model, generator=gen, dtype=torch.float64)
    return keys, W, k_star, v_star


@pytest.mark.parametrize("seed", [0, 1])
def test_rank_one_update_writes_the_new_value(seed):
    keys, W, k, v = _problem(seed)
    C = keys.T @ keys / len(keys)
    W_new = rank_one_update(W.float(), C.float(), k.float(), v.float())
    assert W_new.dtype == torch.float32
    assert ((k.float() @ W_new - v.float()).norm() / v.norm()).item() < 1e-5


def test_rank_one_update_with_identity_covariance_is_the_naive_update():
    _, W, k, v = _problem(2)
    naive = W + torch.outer(k, v - k @ W) / (k @ k)  # the smallest Frobenius change with k W' = v
    torch.testing.assert_close(rank_one_update(W, torch.eye(len(k), dtype=W.dtype), k, v), naive)


@pytest.mark.parametrize("seed", [3, 4])
def test_rank_one_update_minimises_the_change_on_the_keys(seed):
    """Independent solve: every D with k* D = r is D0 + N Z (N spans the null space of k*); the best Z is the least
    squares solution of K (D0 + N Z) = 0 over the sampled keys K, whose second moment is C."""
    keys, W, k, v = _problem(seed)
    C = keys.T @ keys / len(keys)
    D = rank_one_update(W, C, k, v) - W
    r = v - k @ W
    D0 = torch.outer(k, r) / (k @ k)
    N = torch.linalg.svd(k[None], full_matrices=True).Vh[1:].T  # (d_mlp, d_mlp - 1), orthogonal to k
    Z = torch.linalg.lstsq(keys @ N, -(keys @ D0)).solution
    torch.testing.assert_close(D, D0 + N @ Z, atol=1e-9, rtol=1e-7)
    # And any other admissible change moves the keys' outputs more.
    worse = D + N @ torch.randn(N.shape[1], W.shape[1], dtype=W.dtype, generator=torch.Generator().manual_seed(0))
    assert (keys @ worse).norm() > (keys @ D).norm()


def test_memit_update_is_the_regularised_least_squares_solution():
    keys, W, _, _ = _problem(5)
    gen = torch.Generator().manual_seed(1)
    K = torch.randn(7, W.shape[0], generator=gen, dtype=W.dtype)
    R = torch.randn(7, W.shape[1], generator=gen, dtype=W.dtype)
    lam = 3.0
    C = keys.T @ keys / len(keys)
    D = memit_update(W, C, K, R, mom2_weight=lam) - W
    # min lam |keys D|^2 / n + |K D - R|^2: one stacked least-squares problem.
    A = torch.cat([(lam / len(keys)) ** 0.5 * keys, K])
    B = torch.cat([torch.zeros(len(keys), W.shape[1], dtype=W.dtype), R])
    torch.testing.assert_close(D, torch.linalg.lstsq(A, B).solution, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("call", [
    lambda W, C, k, v: rank_one_update(W, C[:-1, :-1], k, v),
    lambda W, C, k, v: rank_one_update(W, C, k[:-1], v),
    lambda W, C, k, v: rank_one_update(W, C, k, v[:-1]),
    lambda W, C, k, v: rank_one_update(W.T, C, k, v),
    lambda W, C, k, v: memit_update(W, C, k[None], v[None], mom2_weight=0.0),
    lambda W, C, k, v: memit_update(W, C, k[None, :-1], v[None], mom2_weight=1.0),
])
def test_updates_reject_shapes_that_do_not_fit(call):
    keys, W, k, v = _problem(6)
    with pytest.raises(ValueError):
        call(W, keys.T @ keys, k, v)


def test_weight_edit_applies_and_undoes_exactly(make_tiny_transformer):
    model = make_tiny_transformer(seed=0, d_mlp=8)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    delta = torch.randn_like(model.blocks[1].mlp.W_out) * 1e-3  # small: float addition would not undo exactly
    edit = WeightEdit(model, {"blocks.1.mlp.W_out": delta})
    with edit:
        assert edit.applied
        torch.testing.assert_close(model.blocks[1].mlp.W_out, before["blocks.1.mlp.W_out"] + delta)
        with pytest.raises(RuntimeError):
            edit.apply()
    assert not edit.applied
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())
    with pytest.raises(RuntimeError):
        edit.undo()
    with pytest.raises(ValueError):
        WeightEdit(model, {"blocks.1.mlp.W_in": delta})


# --- end to end on the shipped fact model ---


@pytest.fixture(scope="module")
def fact_setup(shipped_fact_run):
    """The shipped fact model, its task, its traced MLP layer (0: README, "Facts") and ``E[k k^T]`` of layers 0-1."""
    model, run = shipped_fact_run
    return model, run.task, 0, second_moments(model, run.task, [0, 1], n_batches=4)


def test_second_moments_match_a_hand_computation(fact_setup):
    """One forward pass per batch for every layer (``key_second_moment`` with several layers) gives each layer's
    ``E[k k^T]`` over the non-padding positions, as a plain cache of ``hook_post`` does."""
    model, task, _, C = fact_setup
    assert sorted(C) == [0, 1]
    tokens = torch.cat([task.train_batch(1_000_000 + i)[0] for i in range(4)])
    _, cache = model.run_with_cache(tokens)
    keep = tokens != PAD
    for layer in (0, 1):
        keys = cache[f"blocks.{layer}.mlp.hook_post"][keep].double()
        assert C[layer].dtype == torch.float64
        torch.testing.assert_close(C[layer], keys.T @ keys / len(keys), rtol=1e-5, atol=1e-9)
    assert torch.equal(second_moments(model, task, [1], n_batches=4)[1], C[1])  # alone, the same numbers


def test_edit_scores_match_a_hand_computation(fact_setup):
    model, task, _, _ = fact_setup
    record = task.kb.edit_records(1, seed=3)[0]
    scores = edit_scores(model, record)

    def probs(prompt):
        return model(torch.tensor(prompt.tokens)[None])[0, -1].softmax(-1)

    p = probs(record.prompt)
    assert scores.efficacy == float(p[record.new] > p[record.true])
    assert scores.p_new == pytest.approx(p[record.new].item(), abs=1e-6)
    para = [float(probs(q)[record.new] > probs(q)[record.true]) for q in record.paraphrases]
    neigh = [float(probs(q)[record.true] > probs(q)[record.new]) for q in record.neighbourhood]
    other = [float(int(probs(q).argmax()) == a) for q, a in record.other_relations]
    assert scores.paraphrase == pytest.approx(sum(para) / len(para))
    assert scores.neighbourhood == pytest.approx(sum(neigh) / len(neigh))
    assert scores.other_relations == pytest.approx(sum(other) / len(other))
    summary = summarise_scores([scores, scores])
    parts = [summary["efficacy"], summary["paraphrase"], summary["neighbourhood"]]
    if min(parts) > 0:
        assert summary["score"] == pytest.approx(3 / sum(1 / x for x in parts))


def test_rome_rewrites_facts_and_undoes(fact_setup):
    model, task, layer, C = fact_setup
    records = task.kb.edit_records(6, seed=4)
    tokens = task.train_batch(0)[0]
    clean = model(tokens)
    scores, nll = [], []
    for record in records:
        edit = rome(model, task.kb, record, layer, C[layer])
        nll.append(edit.info["nll"])
        assert list(edit.deltas) == [f"blocks.{layer}.mlp.W_out"]
        # k* @ W_new = v*, the defining constraint, on the model's own weights.
        W_new = model.blocks[layer].mlp.W_out + edit.deltas[f"blocks.{layer}.mlp.W_out"]
        v_star = edit.info["v_star"]
        assert ((edit.info["k_star"] @ W_new - v_star).norm() / v_star.norm()).item() < 1e-5
        with edit:
            scores.append(edit_scores(model, record))
    torch.testing.assert_close(model(tokens), clean, atol=0, rtol=0)  # every edit undone exactly
    # An edit whose value optimisation reached its target (NLL < 0.5) must flip the prompt's answer. On this model
    # every value converges (NLL 0.01-0.05 for these six; README: efficacy 100% over 100 facts at layer 0). On the
    # tests' tiny fact model (2 layers of d_model 32) 0 to 5 of 6 converged, by seed, the delta being clamped at 4 |v|.
    assert max(nll) < 0.5, nll
    assert all(s.efficacy == 1.0 for s in scores), [s.efficacy for s in scores]
    summary = summarise_scores(scores)
    assert summary["neighbourhood"] >= 0.8 and summary["paraphrase"] >= 0.5, summary


def test_memit_applies_many_edits_in_one_update(fact_setup):
    model, task, _, C = fact_setup
    records = task.kb.edit_records(10, seed=5)
    before = summarise_scores([edit_scores(model, r) for r in records])
    edit = memit(model, task.kb, records, [0, 1], C)
    assert sorted(edit.deltas) == ["blocks.0.mlp.W_out", "blocks.1.mlp.W_out"]
    with edit:
        after = summarise_scores([edit_scores(model, r) for r in records])
    assert before["efficacy"] == 0 and after["efficacy"] >= 0.8, after  # 1.0 measured; README: 91% for 100 facts


@pytest.mark.parametrize("change", ["layer", "relation", "subject", "repeat"])
def test_editing_rejects_bad_requests(fact_setup, change):
    import dataclasses

    model, task, layer, C = fact_setup
    record = task.kb.edit_records(1, seed=0)[0]
    with pytest.raises(ValueError):
        if change == "layer":
            rome(model, task.kb, record, model.cfg.n_layers, C[layer])
        elif change == "relation":
            rome(model, task.kb, dataclasses.replace(record, relation="flies_to"), layer, C[layer])
        elif change == "subject":
            rome(model, task.kb, dataclasses.replace(record, subject=10_000), layer, C[layer])
        else:
            memit(model, task.kb, [record, record], [0], C)


def test_public_names():
    assert mt.editing.rank_one_update is rank_one_update and mt.editing.rome is rome
    assert mt.facts.KnowledgeBase is mt.tasks.KnowledgeBase
