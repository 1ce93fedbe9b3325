import warnings

import pytest
import torch

from mi_toolkit import ModularArithmetic, build_model, grokking_model_config, make_grokking_model


@pytest.mark.parametrize("op,fn", [("+", lambda a, b, p: (a + b) % p), ("-", lambda a, b, p: (a - b) % p),
                                   ("*", lambda a, b, p: (a * b) % p)])
def test_modular_dataset_matches_python_arithmetic(op, fn):
    p = 7
    task = ModularArithmetic(p=p, op=op, frac_train=0.5)
    rows = [(a, b) for a in range(p) for b in range(p)]
    assert task.tokens.tolist() == [[a, b, p] for a, b in rows]
    assert task.labels.tolist() == [fn(a, b, p) for a, b in rows]


def test_split_is_seeded_disjoint_and_complete():
    t1, t2, t3 = ModularArithmetic(p=11, seed=3), ModularArithmetic(p=11, seed=3), ModularArithmetic(p=11, seed=4)
    assert torch.equal(t1.train_indices, t2.train_indices)
    assert not torch.equal(t1.train_indices, t3.train_indices)
    assert len(t1.train_indices) == int(0.3 * 121)
    both = torch.cat([t1.train_indices, t1.test_indices]).sort().values
    assert torch.equal(both, torch.arange(121))


def test_explicit_split_round_trip():
    task = ModularArithmetic(p=13, frac_train=0.4, seed=1)
    again = ModularArithmetic(p=13, train_indices=task.split_dict()["train_indices"])
    assert torch.equal(task.train_indices, again.train_indices)
    assert again.frac_train == pytest.approx(len(task.train_indices) / 169)


@pytest.mark.parametrize("kwargs,match", [
    (dict(p=2), "p must be"), (dict(p=7, frac_train=0.0), "frac_train"), (dict(p=7, frac_train=1.0), "frac_train"),
    (dict(p=7, op="/"), "unknown operation"), (dict(p=7, train_indices=[0, 0]), "distinct"),
    (dict(p=7, train_indices=[49]), r"\[0, 49\)"),
])
def test_task_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModularArithmetic(**kwargs)


def test_paper_architecture_and_overrides():
    cfg = grokking_model_config()
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (1, 128, 4, 32, 512)
    assert (cfg.d_vocab, cfg.d_vocab_out, cfg.n_ctx, cfg.act_fn, cfg.normalization_type) == (114, 113, 3, "relu", None)
    assert grokking_model_config(7, d_model=16, d_head=4).d_model == 16


def test_model_seed_reproducible_and_biases_frozen():
    m1, m2, m3 = make_grokking_model(7, seed=1, d_mlp=32), make_grokking_model(7, seed=1, d_mlp=32), \
        make_grokking_model(7, seed=2, d_mlp=32)
    assert torch.equal(m1.W_E, m2.W_E) and not torch.equal(m1.W_E, m3.W_E)
    frozen = [n for n, p in m1.named_parameters() if not p.requires_grad]
    assert frozen and all(n.split(".")[-1].startswith("b_") for n in frozen)


def test_model_build_does_not_touch_global_rng_or_warn():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_model(grokking_model_config(5, d_model=8, d_head=2, d_mlp=8), seed=9)
    assert torch.equal(torch.rand(3), expected)
