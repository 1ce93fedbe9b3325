"""Shared fixtures: the device and the tiny models several test files read.

Session-scoped models are shared by every test that asks for them, so tests must not change them (no training, no
``load_state_dict``, no parameter edits; hooks must be removed again, as ``model.hooks(...)`` does). A test that
changes a model builds its own with a factory fixture (``make_tiny_transformer``, ``make_tiny_grokking_model``).
"""

import pytest
import torch

import mi_toolkit as mt
from mi_toolkit.core import has_hooks

TINY_D_VOCAB = 20
"""Vocabulary of :func:`make_tiny_transformer`'s models (the tests that use them draw tokens from ``0 .. 19``)."""


def _shared(model):
    """Yield ``model`` to the tests that share it, then check that none of them changed it or left a hook on it."""
    before = {name: value.clone() for name, value in model.state_dict().items()}
    yield model
    after = model.state_dict()
    changed = [name for name, value in before.items() if not torch.equal(value, after[name])]
    assert not changed, f"a test changed the shared model's {changed}; build a model of its own with a factory"
    assert not has_hooks(model), "a test left a hook on a shared model"


def _shared_with(model, *others):
    """As :func:`_shared`, yielding ``(model, *others)``."""
    for _ in _shared(model):
        yield (model, *others)


@pytest.fixture(scope="session")
def device() -> str:
    """CPU always; the CUDA path is exercised where a GPU is present."""
    return "cuda" if torch.cuda.is_available() else "cpu"


# --- small HookedTransformers built from a config ---


def _tiny_transformer(*, seed: int, biases: str = "normal", d_mlp: int | None = None, **fields):
    """A 2-layer transformer (d_model 16, 4 heads of 4, d_vocab 20, n_ctx 10; ``fields`` may change any of them) with
    non-zero biases, in eval mode.

    Args:
        seed: seed of :func:`mt.build_model`.
        biases: TransformerLens initialises biases at zero, which would hide their terms from the tests.
            ``"normal"``: every bias drawn from N(0, 0.1); ``"shifted"``: every bias and every LayerNorm weight
            shifted by 0.2 N(0, 1). Both are seeded by the parameter's name.
        d_mlp: MLP width (leave None for an attention-only model).
        **fields: any other ``HookedTransformerConfig`` field; rotary models get ``rotary_dim=4``.
    """
    cfg = {**dict(n_layers=2, d_model=16, d_head=4, n_heads=4, d_vocab=TINY_D_VOCAB, n_ctx=10), **fields}
    if d_mlp is not None:
        cfg["d_mlp"] = d_mlp
    if cfg.get("positional_embedding_type") == "rotary":
        cfg.setdefault("rotary_dim", 4)
    model = mt.build_model(cfg, seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            generator = torch.Generator().manual_seed(len(name))
            if biases == "normal":
                if name.split(".")[-1].startswith("b_"):
                    param.normal_(0, 0.1, generator=generator)
            elif biases == "shifted":
                if name.split(".")[-1].startswith("b_") or name.endswith(".w"):
                    param.add_(torch.randn(param.shape, generator=generator) * 0.2)
            else:
                raise ValueError(f"biases must be 'normal' or 'shifted', got {biases!r}")
    return model.eval()


@pytest.fixture(scope="session")
def make_tiny_transformer():
    """Factory of :func:`_tiny_transformer`: a new model on every call, so the caller may change it."""
    return _tiny_transformer


@pytest.fixture(scope="session")
def tiny_mlp_ln_model():
    """2 layers with MLPs (d_mlp 8, GELU) and LayerNorm, seed 1: the reference model of the patching tests."""
    yield from _shared(_tiny_transformer(seed=1, act_fn="gelu", normalization_type="LN", d_mlp=8))


@pytest.fixture(scope="session")
def tiny_tokens():
    """A clean and a corrupted batch (3 sequences of 6 tokens) for the tiny transformers."""
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, TINY_D_VOCAB, (3, 6), generator=gen)
    corrupted = torch.randint(0, TINY_D_VOCAB, (3, 6), generator=gen)
    return clean, corrupted


@pytest.fixture(scope="session")
def tiny_induction_model():
    """The induction preset shrunk: 2 attention-only layers, rotary positions, 2 heads of 8, d_vocab 12, untrained."""
    yield from _shared(mt.make_induction_model(d_vocab=12, n_ctx=16, d_model=16, n_heads=2, d_head=8, seed=4).eval())


@pytest.fixture(scope="session")
def trained_induction():
    """``mt.train_induction_model()`` with its defaults (seconds on a CPU): a previous-token head in layer 0 and
    induction heads in layer 1. Shared: tests must not change it."""
    run = mt.train_induction_model(progress=False)
    for _ in _shared(run.model):
        yield run


# --- grokking transformers ---


def _tiny_grokking_model(p: int = 11, *, seed: int = 0):
    return mt.make_grokking_model(p, d_model=16, d_head=4, n_heads=4, d_mlp=32, seed=seed)


@pytest.fixture(scope="session")
def make_tiny_grokking_model():
    """Factory: the grokking transformer shrunk (d_model 16, 4 heads of 4, d_mlp 32; biases frozen at zero) for
    ``p`` (default 11), a new untrained model on every call, so the caller may train it."""
    return _tiny_grokking_model


@pytest.fixture(scope="session")
def tiny_grokking_model():
    """``make_tiny_grokking_model(11, seed=0)``, untrained, in eval mode."""
    yield from _shared(_tiny_grokking_model(11, seed=0).eval())


@pytest.fixture(scope="session")
def grokking_model_and_task():
    """A p = 13 grokking transformer (d_model 32, d_mlp 48, seed 3) with every parameter, biases included,
    perturbed by 0.1 N(0, 1), and its task (half the pairs in the training split, seed 1)."""
    model = mt.make_grokking_model(13, d_model=32, d_head=8, d_mlp=48, freeze_biases=False, seed=3)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    yield from _shared_with(model, mt.ModularArithmetic(p=13, frac_train=0.5, seed=1))


@pytest.fixture(scope="session")
def fitted_grokking_model():
    """A p = 11 grokking transformer (d_model 32, d_mlp 48) fitted to its whole token grid for 100 full-batch Adam
    steps, so that its MLP matters: ``(model, tokens, labels)``, the model in eval mode."""
    model = mt.make_grokking_model(p=11, d_model=32, d_head=8, n_heads=4, d_mlp=48, seed=0)
    a, b = torch.meshgrid(torch.arange(11), torch.arange(11), indexing="ij")
    tokens = torch.stack([a.flatten(), b.flatten(), torch.full((121,), 11)], dim=1)
    labels = (a + b).flatten() % 11
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(100):
        loss = mt.core.losses.answer_loss(model(tokens)[:, -1], labels, dtype=torch.float64)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.5
    optimiser.zero_grad(set_to_none=True)
    yield from _shared_with(model.eval(), tokens, labels)


# --- the fact-recall model (tests/test_facts.py, tests/test_editing.py) ---


@pytest.fixture(scope="session")
def shipped_fact_run():
    """``mt.load_packaged("facts_small")``, the fact model shipped in the package (4 layers, d_model 128; written by
    ``mi-toolkit facts``, seed 0): ``(model, run)``. The same weights on every CPU, unlike a model trained in the
    test. Shared: tests must not change it (edits are undone by ``with edit:``)."""
    run = mt.load_packaged("facts_small")
    yield from _shared_with(run.model, run)


@pytest.fixture(scope="session")
def tiny_fact_run(tmp_path_factory):
    """``mt.run_facts`` with the tiny preset (80 facts, 4 layers of d_model 32; seconds), written to a temporary run
    directory, without edits: the :class:`~mi_toolkit.core.io.Run`. Shared: tests must not change its model (edits
    are undone by ``with edit:``)."""
    from mi_toolkit.experiments.facts import FactsConfig, run_facts

    run = run_facts(tmp_path_factory.mktemp("facts") / "run", FactsConfig(preset="tiny", n_traced=4, n_edits=0),
                    progress=False, report=False)
    yield from _shared_with(run.model, run)
