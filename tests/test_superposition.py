import math

import pytest
import torch

from mi_toolkit import ToyModel, ToyModelConfig, superposition_metrics, train_toy_model


def _angles_deg(W: torch.Tensor) -> torch.Tensor:
    """Sorted polar angles of the columns of a (2, n) matrix."""
    return torch.rad2deg(torch.atan2(W[1], W[0])).sort().values


@pytest.mark.slow
def test_dense_inputs_give_two_orthogonal_features():
    # Dense features with decaying importance: the two most important get orthogonal directions, the rest ~0.
    cfg = ToyModelConfig(n_features=5, d_hidden=2, feature_probability=(1.0,), importance_decay=0.7, seed=0)
    W = train_toy_model(cfg, progress=False).W.detach()[0]  # (2, 5)
    norms = torch.linalg.vector_norm(W, dim=0)
    assert norms[:2].sub(1).abs().max() < 0.1
    assert norms[2:].max() < 0.2
    cos = torch.dot(W[:, 0], W[:, 1]) / (norms[0] * norms[1])
    assert math.degrees(math.acos(cos.item())) == pytest.approx(90, abs=5)


@pytest.mark.slow
def test_sparse_inputs_give_a_pentagon():
    cfg = ToyModelConfig(n_features=5, d_hidden=2, feature_probability=(0.02,), importance_decay=1.0, seed=0)
    W = train_toy_model(cfg, progress=False).W.detach()[0]
    norms = torch.linalg.vector_norm(W, dim=0)
    assert ((norms > 0.9) & (norms < 1.3)).all(), norms
    angles = _angles_deg(W)
    gaps = torch.cat([angles.diff(), (angles[:1] + 360) - angles[-1:]])
    assert torch.allclose(gaps, torch.full((5,), 72.0), atol=5), gaps


def test_metrics_on_hand_built_geometry():
    # Columns: e1, -e1 (an antipodal pair), e2 (orthogonal to both), and a feature that is dropped.
    model = ToyModel(ToyModelConfig(n_features=4, d_hidden=2, feature_probability=(0.5,)))
    with torch.no_grad():
        model.W.copy_(torch.tensor([[[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.01]]]))
    m = superposition_metrics(model)
    torch.testing.assert_close(m.norms[0], torch.tensor([1.0, 1.0, 2.0, 0.01]))
    # D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2: 1/2 for each of an antipodal pair, 1 for an orthogonal feature.
    torch.testing.assert_close(m.dimensions_per_feature[0, :3], torch.tensor([0.5, 0.5, 4 / (4 + 0.01**2)]))
    torch.testing.assert_close(m.interference[0, :3], torch.tensor([1.0, 1.0, 0.01**2]), atol=1e-6, rtol=0)
    assert m.n_represented.tolist() == [3]


def test_instances_do_not_interact():
    cfg = ToyModelConfig(feature_probability=(1.0, 0.1, 0.01), steps=0)
    model = ToyModel(cfg)
    x = model.sample(256, torch.Generator().manual_seed(0))

    def grad_W():
        model.zero_grad()
        model.loss(x).sum().backward()
        return model.W.grad.clone()

    before = grad_W()
    with torch.no_grad():
        model.W[0] += 1.0
        model.b_final[0] -= 0.5
    after = grad_W()
    assert not torch.equal(before[0], after[0])
    torch.testing.assert_close(before[1:], after[1:], rtol=0, atol=0)


@pytest.mark.slow
def test_sparsity_sweep_represents_more_features_when_sparser():
    cfg = ToyModelConfig(feature_probability=(1.0, 0.1, 0.01), seed=0)
    norms = torch.linalg.vector_norm(train_toy_model(cfg, progress=False).W.detach(), dim=1)  # (instance, n)
    represented = (norms > 0.5).sum(-1)
    assert represented[0] <= 3 and represented[2] == 5


def test_hidden_relu_variant_learns():
    cfg = ToyModelConfig(n_features=6, d_hidden=3, feature_probability=(0.1,), hidden_relu=True, steps=400)
    untrained = ToyModel(cfg)
    trained = train_toy_model(cfg, progress=False)
    x = trained.sample(4096, torch.Generator().manual_seed(0))
    assert trained.loss(x).item() < 0.5 * untrained.loss(x).item()
    h = torch.einsum("ihn,bin->bih", trained.W, x)
    assert (torch.relu(h) != h).any()  # the hidden ReLU is not a no-op on these weights


@pytest.mark.parametrize("bad", [dict(n_features=0), dict(feature_probability=()), dict(feature_probability=(0.0,)),
                                 dict(importance_decay=0.0), dict(lr=-1.0)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        ToyModelConfig(**bad)
