"""Edge graph, edge scores and circuits against hand-written TransformerLens hook loops."""

import dataclasses
import importlib
import math

import pytest
import torch

import mi_toolkit as mt
from mi_toolkit.analysis.circuits import edge_graph, edge_scores
from mi_toolkit.analysis.circuits._engine import patched_logits, sender_outputs

acdc_module = importlib.import_module("mi_toolkit.analysis.circuits.acdc")  # the package's ``acdc`` is the function
scores_module = importlib.import_module("mi_toolkit.analysis.circuits.scores")


def _senders_by_hand(model, tokens):
    """Every sender's output from ``run_with_cache``: the block-0 input, each head's z @ W_O, each MLP's output."""
    _, cache = model.run_with_cache(tokens)
    out = {"input": cache["blocks.0.hook_resid_pre"]}
    for layer in range(model.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"]
        for h in range(model.cfg.n_heads):
            out[f"a{layer}.h{h}"] = z[:, :, h] @ model.blocks[layer].attn.W_O[h]
        if not model.cfg.attn_only:
            out[f"m{layer}"] = cache[f"blocks.{layer}.hook_mlp_out"]
    return out


def _receivers_shifted_by_hand(model, clean, shifts):
    """Logits of the clean run with each receiver in ``shifts`` reading its input plus ``shifts[receiver]``."""
    hooks = []
    for receiver, delta in shifts.items():
        if receiver == "logits":
            name, head = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", None
        elif receiver.startswith("m"):
            name, head = f"blocks.{receiver[1:]}.hook_mlp_in", None
        else:
            layer, head, kind = receiver[1:].split(".")
            name, head = f"blocks.{layer}.hook_{kind}_input", int(head[1:])

        def add(x, hook, delta=delta, head=head):
            x = x.clone()
            if head is None:
                x += delta
            else:
                x[:, :, head] += delta
            return x

        hooks.append((name, add))
    model.set_use_split_qkv_input(True)
    if not model.cfg.attn_only:
        model.set_use_hook_mlp_in(True)
    try:
        return model.run_with_hooks(clean, fwd_hooks=hooks)
    finally:
        model.set_use_split_qkv_input(False)
        if not model.cfg.attn_only:
            model.set_use_hook_mlp_in(False)


def _edge_patched_logits_by_hand(model, clean, corrupted, sender, receiver, position=None):
    """The clean run with ``receiver`` alone reading ``sender``'s corrupted output (at ``position``, default all):
    one hook, one forward pass."""
    delta = _senders_by_hand(model, corrupted)[sender] - _senders_by_hand(model, clean)[sender]
    if position is not None:
        keep = torch.zeros(delta.shape[1], 1)
        keep[position] = 1
        delta = delta * keep
    return _receivers_shifted_by_hand(model, clean, {receiver: delta})


def test_graph_names_and_edges(tiny_mlp_ln_model):
    g = edge_graph(tiny_mlp_ln_model)  # 2 layers, 4 heads, MLPs
    assert g.senders == ("input", "a0.h0", "a0.h1", "a0.h2", "a0.h3", "m0", "a1.h0", "a1.h1", "a1.h2", "a1.h3", "m1")
    assert g.receivers[:2] == ("a0.h0.q", "a0.h1.q") and g.receivers[-2:] == ("m1", "logits")
    # Layer 0: 12 head inputs read the input; m0 reads input + 4 heads; layer 1: 12 x 6; m1 reads 10; logits 11.
    assert g.n_edges == 12 + 5 + 12 * 6 + 10 + 11
    assert ("a0.h2", "m0") in set(g.edges) and ("m0", "a0.h1.q") not in set(g.edges)
    with pytest.raises(ValueError, match="not an edge"):
        g.index(("m1", "a1.h0.k"))
    with pytest.raises(ValueError, match="unknown receiver"):
        g.index(("input", "a9.h0.q"))


@pytest.mark.parametrize("fixture", ["tiny_mlp_ln_model", "tiny_induction_model"])
def test_exact_scores_equal_a_hook_loop(fixture, request):
    model = request.getfixturevalue(fixture)
    gen = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 12, (3, 6), generator=gen)
    corrupted = torch.randint(0, 12, (3, 6), generator=gen)
    metric = mt.metrics.logit_diff(clean[:, -1], corrupted[:, -1])
    scores = edge_scores(model, clean, corrupted, metric, "exact", max_rows=20)  # several passes
    base = metric(model(clean))
    for sender, receiver in scores.graph.edges:
        expected = metric(_edge_patched_logits_by_hand(model, clean, corrupted, sender, receiver)) - base
        assert scores[(sender, receiver)] == pytest.approx(expected.item(), abs=2e-5), (sender, receiver)
    per_position = edge_scores(model, clean, corrupted, metric, "exact", per_position=True, max_rows=30)
    for sender, receiver in scores.graph.edges[::7]:
        for position in (1, 4):
            logits = _edge_patched_logits_by_hand(model, clean, corrupted, sender, receiver, position)
            value = per_position[(sender, receiver)][position].item()
            assert value == pytest.approx((metric(logits) - base).item(), abs=2e-5), (sender, receiver, position)


def test_removing_every_edge_gives_the_corrupted_run(tiny_mlp_ln_model, tiny_tokens):
    model, (clean, corrupted) = tiny_mlp_ln_model, tiny_tokens
    g = edge_graph(model)
    ablated = sender_outputs(model, g, corrupted)
    removed = torch.stack([torch.zeros_like(g.valid), g.valid]).float()[..., None].expand(-1, -1, -1, clean.shape[1])
    logits = patched_logits(model, g, clean, removed, ablated)
    torch.testing.assert_close(logits[: len(clean)], model(clean), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[len(clean) :], model(corrupted), atol=1e-5, rtol=1e-5)


def test_removing_an_mlps_inputs_equals_patching_its_output(tiny_mlp_ln_model, tiny_tokens):
    """All edges into m1 removed = MLP 1 computing on the corrupted residual stream = its corrupted output patched."""
    model, (clean, corrupted) = tiny_mlp_ln_model, tiny_tokens
    g = edge_graph(model)
    removed = torch.zeros(1, *g.valid.shape, clean.shape[1])
    removed[0, g.receiver_index["m1"]] = 1
    logits = patched_logits(model, g, clean, removed, sender_outputs(model, g, corrupted))
    _, cache = model.run_with_cache(corrupted)
    expected = model.run_with_hooks(
        clean, fwd_hooks=[("blocks.1.hook_mlp_out", lambda x, hook: cache["blocks.1.hook_mlp_out"])])
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_eap_is_exact_where_the_metric_is_linear(tiny_induction_model):
    """No LayerNorm, a logit difference: edges into the logits act linearly, so EAP equals exact there."""
    model = tiny_induction_model
    gen = torch.Generator().manual_seed(5)
    clean, corrupted = torch.randint(0, 12, (2, 2, 7), generator=gen)
    metric = mt.metrics.logit_diff(clean[:, -1], corrupted[:, -1])
    exact = edge_scores(model, clean, corrupted, metric, "exact")
    eap = edge_scores(model, clean, corrupted, metric, "eap")
    row = exact.graph.receiver_index["logits"]
    torch.testing.assert_close(eap.tensor[row], exact.tensor[row], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(eap.tensor, exact.tensor, atol=1e-4)  # elsewhere attention makes it nonlinear


def test_eap_ig_along_receiver_paths_is_exact_where_a_receiver_has_one_edge_and_complete_elsewhere(
        tiny_mlp_ln_model, tiny_tokens, monkeypatch):
    """Integrated gradients along one receiver's input: a receiver with one incoming edge (every layer-0 head input)
    gets the exact score in the limit of many steps (the midpoint rule's error falls as 1 / steps^2: 16 steps are
    within 6e-4 of the largest score); for the others the receiver's scores add up to removing all its
    edges at once (IG's completeness), a patched run computed independently by hand."""
    model, (clean, corrupted) = tiny_mlp_ln_model, tiny_tokens
    metric = mt.metrics.logit_diff(clean[:, -1], corrupted[:, -1])
    exact = edge_scores(model, clean, corrupted, metric, "exact")
    scores = edge_scores(model, clean, corrupted, metric, "eap-ig-receivers", ig_steps=16, max_rows=48)
    graph = scores.graph
    assert scores.method == "eap-ig-receivers" and scores.clean_metric == pytest.approx(exact.clean_metric)
    single = [r for r in range(len(graph.receivers)) if graph.valid[r].sum() == 1]
    assert single and len(single) < len(graph.receivers)
    scale = exact.tensor.abs().max().item()
    torch.testing.assert_close(scores.tensor[single], exact.tensor[single], atol=1e-3 * scale, rtol=0)
    senders_clean, senders_corrupted = _senders_by_hand(model, clean), _senders_by_hand(model, corrupted)
    for r, receiver in enumerate(graph.receivers):
        delta = sum(senders_corrupted[s] - senders_clean[s] for s in graph.senders if (s, receiver) in graph.edges)
        whole = metric(_receivers_shifted_by_hand(model, clean, {receiver: delta})).item() - exact.clean_metric
        assert scores.tensor[r].sum().item() == pytest.approx(whole, abs=2e-3 * scale), receiver
    assert not torch.allclose(scores.tensor, exact.tensor, atol=1e-3 * scale)  # edges into one receiver interact
    per_pos = edge_scores(model, clean, corrupted, metric, "eap-ig-receivers", ig_steps=3, per_position=True)
    few = edge_scores(model, clean, corrupted, metric, "eap-ig-receivers", ig_steps=3, max_rows=3)  # a copy a pass
    torch.testing.assert_close(per_pos.tensor.sum(-1), few.tensor, atol=1e-5, rtol=1e-5)
    # Where passes cannot restart at the receiver's block (shortformer positions, left padding), every copy runs from
    # the tokens through the general engine: the same scores.
    monkeypatch.setattr(mt.analysis.circuits.scores, "_restart_points", lambda model, tokens: None)
    for method, restarted in (("eap-ig-receivers", few), ("exact", exact)):
        general = edge_scores(model, clean, corrupted, metric, method, ig_steps=3)
        torch.testing.assert_close(general.tensor, restarted.tensor, atol=1e-5 * scale, rtol=1e-5)


@pytest.mark.parametrize("restart", [True, False])
def test_eap_ig_along_receiver_paths_needs_no_trainable_weights(tiny_mlp_ln_model, tiny_tokens, monkeypatch, restart):
    """Gradients at the receivers' inputs flow from a leaf of the pass's own, so a model whose parameters are all
    frozen scores as the trainable one does, whether the pass restarts at the receiver's block or not."""
    model, (clean, corrupted) = tiny_mlp_ln_model, tiny_tokens
    metric = mt.metrics.logit_diff(clean[:, -1], corrupted[:, -1])
    if not restart:
        monkeypatch.setattr(mt.analysis.circuits.scores, "_restart_points", lambda model, tokens: None)
    expected = edge_scores(model, clean, corrupted, metric, "eap-ig-receivers", ig_steps=2)
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        frozen = edge_scores(model, clean, corrupted, metric, "eap-ig-receivers", ig_steps=2)
    finally:
        for p in trainable:
            p.requires_grad_(True)
    assert expected.tensor.abs().max() > 0
    torch.testing.assert_close(frozen.tensor, expected.tensor, atol=1e-6, rtol=1e-5)


def test_per_position_scores_add_up(tiny_induction_model):
    """Per-position EAP-IG scores sum to the whole-sequence ones; so do exact ones into a linear receiver (the
    logits of a model without LayerNorm under a logit difference)."""
    model = tiny_induction_model
    gen = torch.Generator().manual_seed(6)
    clean, corrupted = torch.randint(0, 12, (2, 2, 7), generator=gen)
    metric = mt.metrics.logit_diff(clean[:, -1], corrupted[:, -1])
    total = edge_scores(model, clean, corrupted, metric, "eap-ig", ig_steps=3)
    per_pos = edge_scores(model, clean, corrupted, metric, "eap-ig", ig_steps=3, per_position=True)
    torch.testing.assert_close(per_pos.tensor.sum(-1), total.tensor, atol=1e-5, rtol=1e-5)
    for max_rows in (2, 5):  # one path point per pass, then two: the same integral
        split = edge_scores(model, clean, corrupted, metric, "eap-ig", ig_steps=3, max_rows=max_rows)
        torch.testing.assert_close(split.tensor, total.tensor, atol=1e-6, rtol=1e-5)
    exact = edge_scores(model, clean, corrupted, metric, "exact", per_position=True)
    row = exact.graph.receiver_index["logits"]
    exact_total = edge_scores(model, clean, corrupted, metric, "exact")
    torch.testing.assert_close(exact.tensor[row].sum(-1), exact_total.tensor[row], atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_refused_before_work(tiny_mlp_ln_model, tiny_tokens):
    clean, corrupted = tiny_tokens
    metric = mt.metrics.logit_diff(0, 1)
    with pytest.raises(ValueError, match="same shape"):
        edge_scores(tiny_mlp_ln_model, clean, corrupted[:, :4], metric)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        edge_scores(tiny_mlp_ln_model, clean + 100, corrupted, metric)
    with pytest.raises(ValueError, match="method"):
        edge_scores(tiny_mlp_ln_model, clean, corrupted, metric, "acdc")


# --- circuits, faithfulness, ACDC ---

from mi_toolkit.analysis.circuits import (  # noqa: E402
    DEFAULT_ROWS,
    ACDCSweep,
    Circuit,
    ablated_outputs,
    acdc,
    acdc_sweep,
    evaluate_circuits,
    faithfulness,
    faithfulness_curve,
    roc_auc,
)


@pytest.fixture(scope="module")
def pair():
    gen = torch.Generator().manual_seed(11)
    return torch.randint(0, 20, (4, 6), generator=gen), torch.randint(0, 20, (4, 6), generator=gen)


@pytest.mark.parametrize("ablation", ["corrupted", "resample", "mean", "zero"])
def test_faithfulness_of_full_and_empty_circuits(tiny_mlp_ln_model, pair, ablation):
    model, (clean, corrupted) = tiny_mlp_ln_model, pair
    g = edge_graph(model)
    metric = mt.metrics.logit_diff(clean[:, -1], corrupted[:, -1])
    assert faithfulness(model, Circuit.full(g), clean, metric, ablation, corrupted) == pytest.approx(1.0)
    empty = Circuit(g, torch.zeros_like(g.valid))
    assert faithfulness(model, empty, clean, metric, ablation, corrupted) == pytest.approx(0.0, abs=1e-6)


def test_ablations_by_hand(tiny_mlp_ln_model, pair):
    model, clean = tiny_mlp_ln_model, pair[0]
    g = edge_graph(model)
    by_hand = _senders_by_hand(model, clean)
    mean = ablated_outputs(model, g, clean, "mean")
    torch.testing.assert_close(mean[g.sender_index["a1.h2"]], by_hand["a1.h2"].mean(0, keepdim=True).expand(4, -1, -1))
    resampled = ablated_outputs(model, g, clean, "resample", seed=3)
    rows = [next(j for j in range(4) if torch.allclose(resampled[0, i], by_hand["input"][j])) for i in range(4)]
    assert sorted(rows) == [0, 1, 2, 3] and all(i != j for i, j in enumerate(rows))  # a derangement
    # The empty circuit under the zero ablation: the logits read only the biases (b_O of each layer, no MLP biases
    # here since mlp_out is zeroed with them).
    empty = Circuit(g, torch.zeros_like(g.valid))
    logits_metric = mt.metrics.reads(None)(lambda logits: logits.sum())
    value = evaluate_circuits(model, [empty], clean, logits_metric, ablated_outputs(model, g, clean, "zero"))[0]
    resid = sum(model.blocks[layer].attn.b_O for layer in range(2)).expand(4, 6, -1)
    expected = model.unembed(model.ln_final(resid)).sum()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_circuit_builders_and_roc(tiny_mlp_ln_model, pair):
    model, (clean, corrupted) = tiny_mlp_ln_model, pair
    metric = mt.metrics.logit_diff(clean[:, -1], corrupted[:, -1])
    scores = edge_scores(model, clean, corrupted, metric, "eap")
    top = Circuit.top_n(scores, 7)
    assert top.n_edges == 7 and set(top.edges) == set(scores.top(7))
    greedy = Circuit.greedy(scores, 10)
    assert greedy.n_edges == 10
    g = scores.graph
    for sender, receiver in greedy.edges:  # every edge feeds the logits or a node already in the circuit
        node = receiver.rsplit(".", 1)[0] if receiver.count(".") == 2 else receiver
        assert node == "logits" or any(s == node for s, _ in greedy.edges)
    assert roc_auc(scores, top) == 1.0  # the top edges outrank every other edge
    reversed_scores = 1.0 / (scores.flat().abs() + 1e-9)
    assert roc_auc(reversed_scores, top) == 0.0
    # A random ranking against a random reference: close to 1/2; by hand for a small case.
    ref = Circuit.from_edges(g, g.edges[:3])
    manual = torch.zeros(g.n_edges)
    manual[[0, 5, 10]] = torch.tensor([3.0, 2.0, 1.0])  # edges 0 (ref) tops; 1, 2 (ref) tie with the zeros
    n_neg = g.n_edges - 3
    expected = (n_neg + 2 * (0.5 * (n_neg - 2))) / (3 * n_neg)
    assert roc_auc(manual, ref) == pytest.approx(expected)


def test_faithfulness_curve(tiny_mlp_ln_model, pair):
    model, (clean, corrupted) = tiny_mlp_ln_model, pair
    metric = mt.metrics.logit_diff(clean[:, -1], corrupted[:, -1])
    scores = edge_scores(model, clean, corrupted, metric, "exact")
    n = scores.graph.n_edges
    curve = faithfulness_curve(model, scores, clean, metric, [0, 10, n], corrupted_tokens=corrupted, n_random=3)
    assert curve.faithfulness[0] == pytest.approx(0.0, abs=1e-6) and curve.faithfulness[-1] == pytest.approx(1.0)
    assert curve.random_mean[-1] == pytest.approx(1.0)
    for lo, mid, hi in zip(curve.low, curve.faithfulness, curve.high):
        assert lo <= mid + 1e-6 and mid <= hi + 1e-6
    single = faithfulness(model, Circuit.top_n(scores, 10), clean, metric, "corrupted", corrupted)
    assert curve.faithfulness[1] == pytest.approx(single, rel=1e-5)


def _acdc_by_hand(model, clean, corrupted, threshold):
    """ACDC as a plain sequential loop: one evaluation per edge tested."""
    g = edge_graph(model)
    metric = mt.metrics.kl_to_clean(model(clean))
    ablated = ablated_outputs(model, g, clean, "corrupted", corrupted)
    mask = g.valid.clone()
    current = evaluate_circuits(model, [Circuit(g, mask)], clean, metric, ablated)[0].item()
    for r in reversed(range(len(g.receivers))):
        node = g.node_of_receiver(r)
        if node != "logits" and not mask[:, g.sender_index[node]].any():
            mask[r] = False
            continue
        for s in reversed(mask[r].nonzero().flatten().tolist()):
            trial = mask.clone()
            trial[r, s] = False
            value = evaluate_circuits(model, [Circuit(g, trial)], clean, metric, ablated)[0].item()
            if value - current < threshold:
                mask, current = trial, value
    return mask


@pytest.mark.parametrize("threshold", [0.02, 0.1])
def test_acdc_batched_equals_the_sequential_loop(tiny_mlp_ln_model, pair, threshold):
    model, (clean, corrupted) = tiny_mlp_ln_model, pair
    result = acdc(model, clean, corrupted, threshold=threshold, max_rows=24)
    expected = _acdc_by_hand(model, clean, corrupted, threshold)
    assert torch.equal(result.circuit.mask, expected)
    # One pass per kept edge and one per receiver visited (plus the first): the speculation's bound.
    assert result.forward_passes <= result.circuit.n_edges + len(result.circuit.graph.receivers) + 1


def test_acdc_sweep_is_acdc_at_each_threshold(tiny_mlp_ln_model, pair, monkeypatch):
    model, (clean, corrupted) = tiny_mlp_ln_model, pair
    metric = mt.metrics.kl_to_clean(model(clean))
    thresholds = [0.1, 0.003, 0.02]
    calls = []
    counted = lambda *args, **kwargs: calls.append(1) or ablated_outputs(*args, **kwargs)  # noqa: E731
    monkeypatch.setattr(acdc_module, "ablated_outputs", counted)
    sweep = acdc_sweep(model, clean, corrupted, thresholds=thresholds)
    assert len(calls) == 1  # the ablated outputs are computed once for every threshold
    assert [r.threshold for r in sweep.results] == thresholds
    for result in sweep.results:
        alone = acdc(model, clean, corrupted, threshold=result.threshold)
        assert torch.equal(result.circuit.mask, alone.circuit.mask)
        assert result.faithfulness == pytest.approx(alone.faithfulness, abs=1e-6)
        by_hand = faithfulness(model, result.circuit, clean, metric, "corrupted", corrupted)
        assert result.faithfulness == pytest.approx(by_hand, abs=1e-4)
    sizes = [r.circuit.n_edges for r in sweep.results]
    assert len(set(sizes)) == 3
    rows = sweep.table()
    assert [row["edges"] for row in rows] == sizes
    assert [row["edge_fraction"] for row in rows] == [n / sweep.results[0].circuit.graph.n_edges for n in sizes]
    fig = mt.plot.acdc_sweep({"tiny": sweep})
    assert sorted(fig.data[0].x) == sorted(sizes) and len(fig.data) == 1


def test_acdc_sweep_picks_the_smallest_faithful_circuit(tiny_mlp_ln_model, pair):
    model, (clean, corrupted) = tiny_mlp_ln_model, pair
    base = acdc(model, clean, corrupted, threshold=0.02)
    small, large = base.circuit, Circuit.full(base.circuit.graph)

    def result(circuit, value):
        return dataclasses.replace(base, circuit=circuit, faithfulness=value)

    sweep = ACDCSweep([result(large, 0.99), result(small, 1.30), result(small, 0.93), result(small, 0.80)])
    assert sweep.smallest(0.9) is sweep.results[2]  # of equal sizes, the one closest to 1 (1.30 overshoots)
    assert sweep.smallest(0.95) is sweep.results[1]
    assert sweep.smallest(1.5) is None
    with pytest.raises(ValueError, match="finite"):
        sweep.smallest(float("nan"))
    for bad in ([], [0.1, 0.0], [float("nan")]):
        with pytest.raises(ValueError, match="threshold"):
            acdc_sweep(model, clean, corrupted, thresholds=bad)


def test_acdc_says_when_faithfulness_is_undefined(tiny_mlp_ln_model, pair):
    model, (clean, _) = tiny_mlp_ln_model, pair
    with pytest.warns(UserWarning, match="undefined"):
        sweep = acdc_sweep(model, clean, clean, thresholds=[0.01])  # corrupted = clean: every circuit is the model
    assert math.isnan(sweep.results[0].faithfulness) and sweep.smallest(0.5) is None
    assert len(mt.plot.acdc_sweep(sweep).data) == 1


def test_edge_scores_take_the_default_rows_of_their_method(tiny_mlp_ln_model, pair, monkeypatch):
    model, (clean, corrupted) = tiny_mlp_ln_model, pair
    metric = mt.metrics.logit_diff(clean[:, -1], corrupted[:, -1])
    seen = {}
    for name in ("_exact", "_receiver_paths"):
        original = getattr(scores_module, name)

        def spy(*args, original=original, name=name):
            seen[name] = args[-2]  # max_rows, before progress
            return original(*args)

        monkeypatch.setattr(scores_module, name, spy)
    edge_scores(model, clean, corrupted, metric, "exact")
    edge_scores(model, clean, corrupted, metric, "eap-ig-receivers")
    assert seen == {"_exact": DEFAULT_ROWS["exact"], "_receiver_paths": DEFAULT_ROWS["eap-ig-receivers"]}
    edge_scores(model, clean, corrupted, metric, "eap-ig-receivers", max_rows=12)
    assert seen["_receiver_paths"] == 12


# --- the trained induction model: ACDC and causal scrubbing find its circuit ---

from mi_toolkit.analysis.circuits import Hypothesis, causal_scrub, token_feature  # noqa: E402
from mi_toolkit.tasks.induction import repeated_tokens  # noqa: E402


def _induction_feature(tokens):
    """Per position: the token after the latest earlier occurrence of the current token (-1 if none)."""
    n, n_pos = tokens.shape
    out = torch.full_like(tokens, -1)
    for q in range(1, n_pos):
        same = tokens[:, :q] == tokens[:, q : q + 1]
        last = (same.long() * torch.arange(q)).argmax(1)
        found = same.any(1)
        out[found, q] = tokens[found, last[found] + 1]
    return out


def _heads(model, tokens, kind, layer):
    scores = mt.model_head_scores(model, tokens, kind)[layer]
    return [f"a{layer}.h{h}" for h in (scores > 0.5).nonzero().flatten().tolist()]


def _hypothesis(readers, previous):
    """``readers`` copy the token that followed the current one last time (their query reads the current token, their
    key the previous-token heads, their value the token there); ``previous`` carry the previous token."""
    edges, features = [], {"input": token_feature(0)}
    for head in readers:
        edges += [(head, "logits"), ("input", f"{head}.q"), ("input", f"{head}.v")]
        edges += [(p, f"{head}.k") for p in previous if p.startswith("a0")]
        features[head] = _induction_feature
    for head in previous:
        edges.append(("input", f"{head}.v"))
        features[head] = token_feature(-1)
    return Hypothesis(tuple(edges), features)


def test_causal_scrubbing_accepts_the_induction_hypothesis_and_rejects_swapped_roles(trained_induction):
    model, task = trained_induction.model, trained_induction.task
    tokens = repeated_tokens(4, 8, task.d_vocab, seed=21)  # [BOS, A, A], 17 positions
    pool = repeated_tokens(256, 8, task.d_vocab, seed=22)
    loss = mt.metrics.loss(tokens, positions=slice(9, None))
    induction = _heads(model, task.eval_tokens(), "induction", 1)
    previous = _heads(model, task.eval_tokens(), "previous_token", 0)
    assert induction and previous
    right = causal_scrub(model, tokens, loss, _hypothesis(induction, previous), pool)
    assert right.loss_recovered >= 0.85 and right.unmatched < 0.05
    assert right.random_loss > 2 * right.scrubbed_loss
    # Swapped roles: the previous-token heads claimed to predict the next token, the induction heads to carry the
    # previous token (and, in layer 1, nothing composes into layer 0).
    swapped = causal_scrub(model, tokens, loss, _hypothesis(previous, induction), pool)
    assert swapped.loss_recovered < 0.5
    assert right.low <= right.loss_recovered <= right.high


def test_acdc_recovers_the_induction_circuit(trained_induction):
    model, task = trained_induction.model, trained_induction.task
    clean, corrupted = task.patching_pair(16)
    loss = mt.metrics.loss(clean, positions=task.repeat_positions)
    found = acdc(model, clean, corrupted, threshold=0.3, metric=loss)
    circuit = found.circuit
    assert faithfulness(model, circuit, clean, loss, "corrupted", corrupted) >= 0.9
    assert circuit.n_edges <= 0.25 * circuit.graph.n_edges
    induction = _heads(model, task.eval_tokens(), "induction", 1)
    previous = _heads(model, task.eval_tokens(), "previous_token", 0)
    # The induction mechanism's edges: a previous-token head into an induction head's key, an induction head's value
    # from the input and its output into the logits.
    assert any((p, f"{h}.k") in circuit for p in previous for h in induction)
    assert any((h, "logits") in circuit and ("input", f"{h}.v") in circuit for h in induction)


def test_acdc_finds_a_small_faithful_circuit_in_the_shipped_models():
    """The issue's target on the shipped weights (the same on every machine): faithfulness >= 0.9 with <= 15% of the
    edges, at one threshold per metric. A regression check: tau 0.8 was chosen from the sweeps of
    ``benchmarks/circuits.py``, where it met the target on the shipped induction model and on four more trained with
    seeds 1-4 (9-12 of 81 edges, faithfulness 0.916-0.988)."""
    induction = mt.load_packaged("induction")
    clean, corrupted = induction.task.patching_pair(16)
    loss = mt.metrics.loss(clean, positions=induction.task.repeat_positions)
    found = acdc(induction.model, clean, corrupted, threshold=0.8, metric=loss)
    assert found.faithfulness >= 0.9 and found.edge_fraction <= 0.15
    assert found.faithfulness == pytest.approx(
        faithfulness(induction.model, found.circuit, clean, loss, "corrupted", corrupted), abs=1e-4)
    ioi = mt.load_packaged("ioi")
    clean, corrupted, answer, subject = ioi.task.patching_pair(32)
    logit_diff = mt.metrics.logit_diff(answer, subject)
    distance = mt.metrics.normalized_distance(logit_diff, ioi.model(clean), ioi.model(corrupted))
    found = acdc(ioi.model, clean, corrupted, threshold=0.03, metric=distance)
    assert found.faithfulness >= 0.9 and found.edge_fraction <= 0.15
    # 1 - normalised logit difference is affine in the logit difference: the same faithfulness.
    assert found.faithfulness == pytest.approx(
        faithfulness(ioi.model, found.circuit, clean, logit_diff, "corrupted", corrupted), abs=1e-4)


# --- the symbolic IOI task, its run directory, the figures ---


def test_ioi_sequences():
    task = mt.IOITask(n_names=10, n_fillers=5, seq_len=9)
    tokens, answers = task.sequences(200, seed=3)
    names = set(task.names.tolist())
    for row, answer in zip(tokens.tolist(), answers.tolist()):
        assert row[0] == mt.tasks.ioi.BOS and row[-1] == mt.tasks.ioi.END
        in_row = [t for t in row if t in names]
        assert len(in_row) == 3 and in_row.count(answer) == 1  # A, B, then S: the answer occurs once
        subject = in_row[2]
        assert subject != answer and in_row.count(subject) == 2 and in_row[:2].count(subject) == 1
    clean, corrupted, answer, subject = task.patching_pair(50)
    assert ((clean != corrupted).sum(1) == 1).all()  # only the subject's second occurrence changes
    for row_c, row_x, a, s in zip(clean.tolist(), corrupted.tolist(), answer.tolist(), subject.tolist()):
        assert [t for t in row_x if t in names].count(s) == 1 and [t for t in row_x if t in names].count(a) == 2
    both = task.sequences(100, seed=4, subject_first=True)[0]
    first = [[t for t in row if t in names] for row in both.tolist()]
    assert all(r[0] == r[2] for r in first)
    with pytest.raises(ValueError, match="seq_len"):
        mt.IOITask(seq_len=4)


def test_ioi_run_directory_round_trip(tmp_path):
    task = mt.IOITask(n_names=6, n_fillers=3, seq_len=7, batch_size=8, eval_batch=16)
    run = mt.train_ioi_model(task, mt.recipes.IOI.replace(steps=3, log_every=1), run_dir=tmp_path / "ioi",
                             progress=False, d_model=16, d_head=4)
    assert set(run.analysis) >= {"accuracy", "loss", "logit_diff", "seconds"}
    loaded = mt.load_run(tmp_path / "ioi")
    assert loaded.task == dataclasses.replace(task, device="cpu")
    tokens = task.eval_set()[0]
    torch.testing.assert_close(loaded.model(tokens), run.model(tokens))


def test_circuit_figures(tiny_mlp_ln_model, pair):
    model, (clean, corrupted) = tiny_mlp_ln_model, pair
    metric = mt.metrics.logit_diff(clean[:, -1], corrupted[:, -1])
    scores = edge_scores(model, clean, corrupted, metric, "eap")
    circuit = Circuit.top_n(scores, 6)
    fig = mt.plot.circuit_graph(circuit, scores)
    assert len(fig.data) == 7 and f"6 of {scores.graph.n_edges}" in fig.layout.title.text  # 6 edges + the nodes
    heat = mt.plot.edge_score_heatmap(scores)
    assert heat.data[0].z.shape == tuple(scores.graph.valid.shape)
    curve = faithfulness_curve(model, scores, clean, metric, [2, 6], corrupted_tokens=corrupted, n_random=2)
    assert len(mt.plot.faithfulness_curves({"EAP": curve}).data) == 4


def test_eap_is_the_derivative_of_exact_patching(tiny_mlp_ln_model, pair):
    """EAP = d/dt metric(edge carries clean + t (corrupted - clean)) at t = 0, by central differences through the
    general edge engine (LayerNorm and MLPs make it nonlinear)."""
    model, (clean, corrupted) = tiny_mlp_ln_model, pair
    metric = mt.metrics.logit_diff(clean[:, -1], corrupted[:, -1])
    g = edge_graph(model)
    eap = edge_scores(model, clean, corrupted, metric, "eap")
    base, moved = sender_outputs(model, g, clean), sender_outputs(model, g, corrupted)
    eps = 1e-2
    for edge in g.edges[::9]:
        removed = torch.zeros(2, *g.valid.shape, clean.shape[1])
        removed[:, g.index(edge)[0], g.index(edge)[1]] = 1
        ups = [metric(patched_logits(model, g, clean, removed[:1], base + t * (moved - base))).item()
               for t in (eps, -eps)]
        derivative = (ups[0] - ups[1]) / (2 * eps)
        assert eap[edge] == pytest.approx(derivative, rel=1e-2, abs=1e-4), edge


def test_edge_scores_behave_as_a_mapping_and_bad_calls_fail_early(tiny_mlp_ln_model, pair):
    model, (clean, corrupted) = tiny_mlp_ln_model, pair
    metric = mt.metrics.logit_diff(clean[:, -1], corrupted[:, -1])
    scores = edge_scores(model, clean, corrupted, metric, "eap", per_position=True)
    assert ("input", "logits") in scores and ("m1", "a0.h0.q") not in scores and scores.get(("x", "y")) is None
    assert len(scores) == scores.graph.n_edges == len(list(scores))
    fig = mt.plot.circuit_graph(Circuit.top_n(scores, 4), scores)  # per-position scores are summed for the widths
    assert len(fig.data) == 5
    with pytest.raises(ValueError, match="threshold"):
        acdc(model, clean, corrupted, threshold=0.0)
    with pytest.raises(ValueError, match="undefined"):
        faithfulness(model, Circuit.full(scores.graph), clean, metric, "corrupted", clean)
    with pytest.raises(ValueError, match="per-example"):
        faithfulness_curve(model, scores, clean, lambda logits: logits.sum(), [2], corrupted_tokens=corrupted)
    hypothesis = Hypothesis((("input", "logits"),), {"input": token_feature(0)})
    with pytest.raises(ValueError, match="pool holds"):
        causal_scrub(model, clean, mt.metrics.loss(clean), hypothesis, torch.cat([clean, corrupted]))
    with pytest.raises(ValueError, match="feature"):
        causal_scrub(model, clean, mt.metrics.loss(clean), Hypothesis((("a0.h1", "logits"),), {}), corrupted)
    with pytest.raises(ValueError, match="level"):
        causal_scrub(model, clean, mt.metrics.loss(clean), hypothesis, corrupted, level=1.0)
    with pytest.raises(ValueError, match="n_bootstrap"):
        faithfulness_curve(model, scores, clean, metric, [2], corrupted_tokens=corrupted, n_bootstrap=0)


@pytest.mark.parametrize("per_position", [False, True])
def test_receiver_gradients_contracted_as_formed_equal_the_kept_gradients(tiny_mlp_ln_model, per_position):
    """Scores formed receiver group by receiver group (``deltas``) equal the kept gradients contracted afterwards."""
    from mi_toolkit.analysis.circuits._engine import receiver_gradients

    model, graph = tiny_mlp_ln_model, edge_graph(tiny_mlp_ln_model)
    clean, corrupted = torch.randint(0, model.cfg.d_vocab, (2, 3, 8), generator=torch.Generator().manual_seed(7))
    metric = mt.metrics.logit_diff(clean[:, -1], corrupted[:, -1])
    kept = receiver_gradients(model, graph, clean, metric, also=corrupted)
    delta = kept.senders[:, 3:] - kept.senders[:, :3]
    expected = torch.einsum("sbpd,rbpd->rsp" if per_position else "sbpd,rbpd->rs", delta, kept.grads)
    formed = receiver_gradients(model, graph, clean, metric, also=corrupted, per_position=per_position,
                                deltas=lambda senders: senders[:, 3:] - senders[:, :3])
    assert formed.grads is None and formed.value == pytest.approx(kept.value)
    torch.testing.assert_close(formed.scores, expected, atol=1e-6, rtol=1e-5)
    assert expected.abs().max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-5), (torch.bfloat16, 0.1)])
@pytest.mark.parametrize("method", ["exact", "eap", "eap-ig", "eap-ig-receivers"])
def test_edge_scores_of_other_dtypes_are_float32_at_least(make_tiny_transformer, method, dtype, tolerance):
    """A float64 or bfloat16 model scores every edge as the float32 one does (to its precision), in float32 at
    least: contractions over batch, positions and d_model do not accumulate in half precision."""
    fields = dict(seed=1, act_fn="gelu", d_mlp=8, normalization_type="LN")
    reference, model = make_tiny_transformer(**fields), make_tiny_transformer(dtype=dtype, **fields)
    model.load_state_dict({k: v.to(dtype) for k, v in reference.state_dict().items()})
    clean, corrupted = torch.randint(0, 20, (2, 3, 6), generator=torch.Generator().manual_seed(8))
    metric = mt.metrics.logit_diff(clean[:, -1], corrupted[:, -1])
    expected = edge_scores(reference, clean, corrupted, metric, method).tensor
    scores = edge_scores(model, clean, corrupted, metric, method).tensor
    assert scores.dtype == torch.promote_types(dtype, torch.float32)
    torch.testing.assert_close(scores.float(), expected, atol=tolerance * expected.abs().max().item(), rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_mlp_ln_model", "tiny_induction_model"])
def test_receiver_gradients_equal_transformerlens_split_input_gradients(fixture, request):
    """The engine forms each head's input gradient from its q/k/v projection's gradient through the shared
    LayerNorm; TransformerLens's split inputs (each head its own copy of the residual stream) give it directly."""
    from mi_toolkit.analysis.circuits._engine import receiver_gradients

    model = request.getfixturevalue(fixture)
    graph = edge_graph(model)
    clean, corrupted = torch.randint(0, model.cfg.d_vocab, (2, 3, 8), generator=torch.Generator().manual_seed(5))
    metric = mt.metrics.logit_diff(clean[:, -1], corrupted[:, -1])
    ours = receiver_gradients(model, graph, clean, metric, also=corrupted).grads

    names = {r: name for r, name in enumerate(graph.receivers) if "." in name}  # every head's q/k/v input
    inputs = {}
    model.set_use_split_qkv_input(True)
    try:
        keep = lambda x, hook: inputs.__setitem__(hook.name, x)  # noqa: E731
        with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_{kind}_input", keep) for layer in range(model.cfg.n_layers)
                                    for kind in "qkv"]):
            value = metric(model(clean))
            grads = dict(zip(inputs, torch.autograd.grad(value, list(inputs.values()))))
    finally:
        model.set_use_split_qkv_input(False)
    for r, name in names.items():
        layer, head, kind = name[1:].split(".")
        expected = grads[f"blocks.{layer}.hook_{kind}_input"][:, :, int(head[1:])]
        assert torch.allclose(ours[r], expected, atol=1e-6, rtol=1e-4), name
