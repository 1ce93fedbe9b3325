"""Finite groups and their real irreducible representations, checked against group theory rather than against
numbers the code produced: homomorphism on the whole table, orthogonality, the dimension count, orthonormal
characters, and the known character tables of S3 and S4."""

import itertools
import math

import pytest
import torch

import mi_toolkit as mt
from mi_toolkit.tasks import groups as G
from mi_toolkit.tasks.irreps import character_table, partitions, standard_tableaux

GROUPS = {
    "C7": lambda: G.cyclic(7), "C8": lambda: G.cyclic(8), "D5": lambda: G.dihedral(5), "D6": lambda: G.dihedral(6),
    "S3": lambda: G.symmetric(3), "S4": lambda: G.symmetric(4), "S5": lambda: G.symmetric(5),
    "A4": lambda: G.alternating(4), "A5": lambda: G.alternating(5), "C3xC4": lambda: G.by_name("C3xC4"),
    # Given only by its Cayley table (shuffled labels): the quaternion group Q8, which has a quaternionic irrep.
    "Q8": lambda: _quaternion_group(),
}


def _quaternion_group() -> G.Group:
    # Elements +-1, +-i, +-j, +-k as (sign, unit) with unit in 1, i, j, k; i^2 = j^2 = k^2 = ijk = -1.
    units = {("1", "1"): (1, "1"), ("1", "i"): (1, "i"), ("1", "j"): (1, "j"), ("1", "k"): (1, "k"),
             ("i", "1"): (1, "i"), ("i", "i"): (-1, "1"), ("i", "j"): (1, "k"), ("i", "k"): (-1, "j"),
             ("j", "1"): (1, "j"), ("j", "i"): (-1, "k"), ("j", "j"): (-1, "1"), ("j", "k"): (1, "i"),
             ("k", "1"): (1, "k"), ("k", "i"): (1, "j"), ("k", "j"): (-1, "i"), ("k", "k"): (-1, "1")}
    elements = [(s, u) for s in (1, -1) for u in "1ijk"]
    perm = [5, 2, 7, 0, 3, 6, 1, 4]  # shuffle the indices so that nothing relies on the order
    index = {e: perm[i] for i, e in enumerate(elements)}
    table = [[0] * 8 for _ in range(8)]
    for x, y in itertools.product(elements, elements):
        sign, unit = units[(x[1], y[1])]
        table[index[x]][index[y]] = index[(x[0] * y[0] * sign, unit)]
    return G.from_table(table, name="Q8")


@pytest.mark.parametrize("name", list(GROUPS))
def test_irreps_are_exact(name):
    group = GROUPS[name]()
    irreps = group.irreps()
    total = 0.0
    characters = []
    for irrep in irreps:
        m = irrep.matrices
        # a homomorphism on the whole Cayley table
        torch.testing.assert_close(m[group.table], torch.einsum("gij,hjk->ghik", m, m), atol=1e-9, rtol=0)
        # real orthogonal
        eye = torch.eye(irrep.dim, dtype=m.dtype).expand_as(m)
        torch.testing.assert_close(m @ m.transpose(1, 2), eye, atol=1e-9, rtol=0)
        # irreducible over the reals: <chi, chi> is 1, 2 or 4 (real, complex, quaternionic type)
        norm = irrep.character.pow(2).mean().item()
        assert norm == pytest.approx(irrep.endomorphism_dim, abs=1e-9)
        total += irrep.dim**2 / irrep.endomorphism_dim
        characters.append(irrep.character)
    assert total == pytest.approx(group.order)  # sum of the complex irreps' dim^2 = |G|
    chi = torch.stack(characters)
    gram = chi @ chi.T / group.order
    torch.testing.assert_close(gram, torch.diag(gram.diag()), atol=1e-9, rtol=0)  # distinct irreps: orthogonal
    torch.testing.assert_close(irreps[0].character, torch.ones(group.order, dtype=torch.float64))  # trivial first


def test_symmetric_group_irreps_are_named_by_partition():
    irreps = G.symmetric(6).irreps()
    assert len(irreps) == 11 == len(partitions(6))
    dims = {r.name: r.dim for r in irreps}
    assert dims["(5,1)"] == 5 and dims["(3,2,1)"] == 16 and dims["(1,1,1,1,1,1)"] == 1
    # Hook length formula, independently of the tableaux enumeration.
    for shape in partitions(6):
        hooks = [shape[r] - c + sum(1 for rr in range(r + 1, len(shape)) if shape[rr] > c)
                 for r in range(len(shape)) for c in range(shape[r])]
        assert len(standard_tableaux(shape)) == math.factorial(6) // math.prod(hooks)
    s5 = G.symmetric(5)
    sign = next(r for r in s5.irreps() if r.name == "(1,1,1,1,1)")
    parity = torch.tensor([(-1.0) ** sum(p[i] > p[j] for i in range(5) for j in range(i + 1, 5)) for p in s5.elements])
    torch.testing.assert_close(sign.character, parity.double())


def test_character_table_of_s4_is_the_textbook_one():
    names, classes, table = character_table(G.symmetric(4))
    sizes = sorted(len(c) for c in classes)
    assert sizes == [1, 3, 6, 6, 8]
    # Each irrep's character on (identity, transposition, double transposition, 3-cycle, 4-cycle).
    def cycle_type(p):
        seen, lengths = set(), []
        for start in range(4):
            if start not in seen:
                n, x = 0, start
                while x not in seen:
                    seen.add(x)
                    x, n = p[x], n + 1
                lengths.append(n)
        return tuple(sorted(lengths, reverse=True))
    s4 = G.symmetric(4)
    order = [(1, 1, 1, 1), (2, 1, 1), (2, 2), (3, 1), (4,)]
    column = [next(i for i, c in enumerate(classes) if cycle_type(s4.elements[c[0]]) == t) for t in order]
    expected = {"(4)": [1, 1, 1, 1, 1], "(3,1)": [3, 1, -1, 0, -1], "(2,2)": [2, 0, 2, -1, 0],
                "(2,1,1)": [3, -1, -1, 0, 1], "(1,1,1,1)": [1, -1, 1, 1, -1]}
    for name, row in zip(names, table):
        torch.testing.assert_close(row[column], torch.tensor(expected[name], dtype=torch.float64), atol=1e-9, rtol=0)


def test_cyclic_irreps_are_the_fourier_frequencies():
    irreps = G.cyclic(9).irreps()
    assert [r.name for r in irreps] == ["k=0", "k=1", "k=2", "k=3", "k=4"]
    x = torch.arange(9, dtype=torch.float64)
    for k, r in enumerate(irreps[1:], start=1):
        torch.testing.assert_close(r.character, 2 * torch.cos(2 * math.pi * k * x / 9))


def test_group_constructors():
    assert G.dihedral(7).order == 14 and G.alternating(5).order == 60 and G.symmetric(6).order == 720
    s3 = G.symmetric(3)
    # (x * y)(k) = x(y(k))
    assert s3.multiply((1, 2, 0), (1, 0, 2)) == (2, 1, 0)
    assert all(s3.table[i, s3.inverse[i]] == s3.identity for i in range(6))
    product = G.direct_product(G.cyclic(2), G.cyclic(3))
    assert product.order == 6 and len(product.conjugacy_classes()) == 6  # abelian
    generated = G.from_permutations([(1, 0, 2, 3), (1, 2, 3, 0)])  # a transposition and a 4-cycle generate S4
    assert generated.order == 24
    assert mt.groups.by_name("C5xC5").order == 25


@pytest.mark.parametrize("table, message", [
    ([[0, 1], [1, 1]], "inverse"),
    ([[1, 0], [0, 0]], "identity"),
    ([[0, 1, 2], [1, 2, 0]], "square"),
    ([[0, 3], [1, 0]], "indices"),
    # A Latin square with an identity that is not associative (a loop that is not a group).
    ([[0, 1, 2, 3, 4], [1, 0, 3, 4, 2], [2, 4, 0, 1, 3], [3, 2, 4, 0, 1], [4, 3, 1, 2, 0]], "associative"),
])
def test_tables_that_are_not_groups_are_refused(table, message):
    with pytest.raises(ValueError, match=message):
        G.from_table(table)


def test_bad_names_and_elements():
    with pytest.raises(ValueError, match="unknown group"):
        G.by_name("Z5")
    with pytest.raises(ValueError, match="not an element"):
        G.symmetric(3).index((0, 0, 1))
    with pytest.raises(ValueError, match="out of range"):
        G.symmetric(3).check_elements(torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="not a permutation"):
        G.from_permutations([(0, 0, 1)])


def test_group_analysis_on_a_cyclic_group_is_the_fourier_analysis():
    # Algebraic identities, so any model will do: a random one, read both ways.
    from mi_toolkit.analysis import fourier, progress
    from mi_toolkit.analysis import representations as R

    p = 13
    model = mt.make_grokking_model(p, seed=1, d_model=32, d_head=8, d_mlp=64)
    modular = mt.ModularArithmetic(p=p, frac_train=0.5, seed=2)
    composition = mt.GroupComposition(G.cyclic(p), frac_train=0.5, seed=2)
    assert torch.equal(modular.tokens, composition.tokens) and torch.equal(modular.labels, composition.labels)
    fourier_clusters = fourier.neuron_clusters(model, modular)
    irrep_clusters = R.neuron_irreps(model, composition)  # irreps of C_p are ordered k = 0, 1, ..., so index = k
    torch.testing.assert_close(irrep_clusters.fractions, fourier_clusters.fractions, atol=1e-5, rtol=0)
    freqs = [1, 4, 6]
    shares = R.irrep_logit_shares(model, composition).shares
    torch.testing.assert_close(shares[freqs].float(), fourier.logit_decomposition(model, modular, freqs).fraction_per_freq,
                               atol=1e-6, rtol=0)
    assert R.restricted_loss_irreps(model, composition, freqs) == pytest.approx(
        progress.restricted_loss(model, modular, freqs), rel=1e-5)
    assert R.excluded_loss_irreps(model, composition, freqs) == pytest.approx(
        progress.excluded_loss(model, modular, freqs), rel=1e-5)
    embed = fourier.frequency_norms(fourier.embedding_fourier_norms(model, p)).detach()
    torch.testing.assert_close(R.irrep_norms(model.W_E[:p].detach(), composition.group)[1:], embed, atol=1e-5, rtol=0)


def test_coset_shares_find_planted_subgroups():
    # f(x) = sign(x) is constant on the cosets of A4; g(x) = x(0) on the left cosets x H of H = Stab(0) (order 6).
    from mi_toolkit.analysis import representations as R

    s4 = G.symmetric(4)
    sign = next(r for r in s4.irreps() if r.name == "(1,1,1,1)").character
    image_of_0 = torch.tensor([float(x[0]) for x in s4.elements], dtype=torch.float64)
    subgroup_list = R.subgroups(s4)
    shares = R.coset_shares(torch.stack([sign, image_of_0], dim=1), s4, subgroup_list)
    largest_exact = [max((h for i, h in enumerate(subgroup_list) if shares[i, col] > 1 - 1e-9), key=len)
                     for col in range(2)]
    alternating = {s4.index(p) for p in G.alternating(4).elements}
    stabiliser = {i for i, x in enumerate(s4.elements) if x[0] == 0}
    assert set(largest_exact[0]) == alternating
    assert set(largest_exact[1]) == stabiliser
    # On the right cosets H x, x(0) is not constant (it is x^-1(0) that is).
    right = R.coset_shares(image_of_0[:, None], s4, [tuple(sorted(stabiliser))], side="right")
    assert right[0, 0] < 0.9


def test_a_groups_run_directory_and_bad_input(tmp_path, capsys):
    from mi_toolkit.cli import main as cli

    run = mt.run_groups(tmp_path / "run", mt.GroupsConfig(group="D5", steps=30, checkpoint_every=10), progress=False)
    a = run.analysis
    # A tiny group's defaults (order <= 10): 95% of its 100 pairs, Muon for the weight matrices.
    assert len(run.task.train_indices) == 95 and run.config["task"]["frac_train"] == 0.95
    assert run.config["train"]["optimizer"] == "muon" and run.config["groups_config"]["frac_train"] is None
    assert [r["name"] for r in a["irreps"]] == [r.name for r in G.dihedral(5).irreps()]
    assert sum(r["dim"] ** 2 for r in a["irreps"]) == 10  # D5's irreps are all of real type
    assert set(a["checks"]) == set(mt.experiments.groups.GROUP_CHECKS) and a["stop_reason"] == "step budget"
    loaded = mt.load_run(tmp_path / "run")
    assert loaded.task.group.name == "D5" and torch.equal(loaded.task.train_indices, run.task.train_indices)
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Character table of D5" in html and "Algorithm checks" in html
    assert cli(["groups", "--group", "S9", "--out", str(tmp_path / "x")]) == 2
    assert "symmetric group size" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_resuming_under_other_training_settings_is_refused_before_anything_is_overwritten(tmp_path, capsys):
    # A run trained with other settings than the command's now (here: its weight decay, as for a small group trained
    # before the defaults changed) is refused with exit status 2, and its config.json is left as it was.
    from mi_toolkit.cli import main as cli

    mt.run_groups(tmp_path / "run", mt.GroupsConfig(group="D5", weight_decay=0.5, steps=20, checkpoint_every=10),
                  progress=False, report=False)
    before = (tmp_path / "run" / "config.json").read_text()
    assert cli(["groups", "--group", "D5", "--steps", "20", "--quiet", "--out", str(tmp_path / "run")]) == 2
    assert "trained with another configuration" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.json").read_text() == before


def test_review_edge_cases():
    # Only a table that is the cyclic one gets frequency names; a Klein group named "C2xC2" does not.
    klein = G.from_table(G.by_name("C2xC2").table, name="C2xC2")
    assert not any(r.name.startswith("k=") for r in klein.irreps())
    # The groups' changes apply to the fast recipe only (the paper recipe keeps its own), by the group's size: AdamW
    # with weight decay 2 on 60% of the pairs from order 50 up, Muon with weight decay 0.2 on 90% below it.
    large, small = mt.GroupsConfig(group="A5"), mt.GroupsConfig(group="D24")  # orders 60 and 48
    large_recipe = large.train_config()
    assert (large_recipe.optimizer, large_recipe.weight_decay, large.split_fraction) == ("adamw", 2, 0.6)
    assert (small.train_config().optimizer, small.train_config().muon_lr, small.train_config().weight_decay,
            small.split_fraction) == ("muon", 0.08, 0.2, 0.9)
    assert mt.GroupsConfig(group="S4", frac_train=0.6).split_fraction == 0.6
    assert mt.GroupsConfig(group="S4", frac_train=0.6).n_train == int(0.6 * 24 ** 2)
    paper = mt.GroupsConfig(group="S4", recipe="paper").train_config()
    assert (paper.optimizer, paper.weight_decay) == ("adamw", 1.0)
    assert mt.GroupsConfig(group="S4", weight_decay=0.5).train_config().weight_decay == 0.5
    assert mt.GroupsConfig(group="S5", muon_lr=0.02).train_config().optimizer == "muon"
    assert mt.GroupsConfig(group="S4", optimizer="adamw").train_config().optimizer == "adamw"
    for bad in (dict(optimizer="sgd"), dict(optimizer="adamw", muon_lr=0.1)):
        with pytest.raises(ValueError, match="optimizer must be"):
            mt.GroupsConfig(group="S4", **bad)
    # The thresholds: order 49 is small, order 50 is not; up to order 10 (100 pairs) a small group trains on 95%.
    assert mt.GroupsConfig(group="C7xC7").small_group and not mt.GroupsConfig(group="D25").small_group
    fractions = {name: mt.GroupsConfig(group=name).split_fraction for name in ("D3", "D5", "C10", "C11", "D6")}
    assert fractions == {"D3": 0.95, "D5": 0.95, "C10": 0.95, "C11": 0.9, "D6": 0.9}
    assert mt.GroupsConfig(group="D5").train_config().optimizer == "muon"
    assert mt.GroupsConfig(group="D5", frac_train=0.9).split_fraction == 0.9
    # On C_p the key irreps are the key frequencies, so the groups check allows as many as the grokking check.
    from mi_toolkit.experiments.grokking import CHECKS, MAX_KEY_FREQUENCIES

    key_irreps, key_frequencies = mt.experiments.groups.GROUP_CHECKS["key irreps"][1], CHECKS["key frequencies"][1]
    assert key_irreps(MAX_KEY_FREQUENCIES) and key_frequencies(MAX_KEY_FREQUENCIES)
    assert not key_irreps(MAX_KEY_FREQUENCIES + 1) and not key_frequencies(MAX_KEY_FREQUENCIES + 1)
    # A split must leave pairs on both sides.
    with pytest.raises(ValueError, match="at least one pair"):
        mt.GroupComposition(G.cyclic(2), frac_train=0.2)
    # miiii with p = 3 has the single task q = 2 and a 2-logit output.
    task = mt.MultiTaskModular(p=3, frac_train=0.5)
    task.check_model(mt.make_grokking_model(3, d_model=16, d_head=4, d_mlp=16, d_vocab_out=2))
