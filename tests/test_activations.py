"""Activation collection (``mt.core.activations``): the early-stopping forward pass and activation streams."""

import pytest
import torch

import mi_toolkit as mt
from mi_toolkit.core import get_act_name, has_hooks
from mi_toolkit.core.activations import run_until


def test_run_until_matches_run_with_cache_and_stops_early(tiny_mlp_ln_model, tiny_tokens):
    model, tokens = tiny_mlp_ln_model, tiny_tokens
    names = [get_act_name("z", 0), get_act_name("resid_mid", 1)]
    _, cache = model.run_with_cache(tokens[0], names_filter=names)
    reached = []
    with model.hooks(fwd_hooks=[(get_act_name("post", 1), lambda act, hook: reached.append(hook.name))]):
        acts = run_until(model, tokens[0], names)
    assert reached == []  # the MLP of layer 1 comes after the last activation asked for
    for name in names:
        torch.testing.assert_close(acts[name], cache[name], rtol=0, atol=0)
    assert not has_hooks(model)
    with pytest.raises(ValueError, match="unknown hook names"):
        run_until(model, tokens[0], ["blocks.0.hook_nothing"])


def test_stream_flattens_head_dimensions(fitted_grokking_model):
    model, tokens, _ = fitted_grokking_model
    stream = mt.ActivationStream(model, "blocks.0.attn.hook_z", tokens, positions=slice(1, 3), batch_size=40)
    acts = torch.cat(list(stream))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    z = cache["blocks.0.attn.hook_z"][:, 1:3]  # (batch, pos, head_index, d_head)
    assert stream.d_in == 32
    torch.testing.assert_close(acts, z.reshape(-1, 32))
