"""The real-model loading path, exercised offline on a tiny GPT-2 built and saved locally."""

import pytest
import torch
import transformers  # a dependency of transformer-lens

from mi_toolkit.models import load_pretrained


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    # n_ctx is written explicitly: TL's GPT-2 config converter reads it (as real GPT-2 configs have it).
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=16, n_ctx=16,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    path = tmp_path_factory.mktemp("tiny-gpt2")
    hf.save_pretrained(path)
    return path, hf


def test_local_gpt2_matches_hugging_face_log_probs(tiny_gpt2):
    path, hf = tiny_gpt2
    model = load_pretrained(str(path))
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (2, 32, 97)
    tokens = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
        theirs = hf(tokens).logits.log_softmax(-1)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    _, cache = model.run_with_cache(tokens)
    assert cache["blocks.1.attn.hook_pattern"].shape == (3, 4, 12, 12)


def test_unprocessed_weights_keep_raw_logits(tiny_gpt2):
    path, hf = tiny_gpt2
    model = load_pretrained(str(path), fold_ln=False, center_writing_weights=False, center_unembed=False, hf_model=hf)
    tokens = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-4, rtol=1e-4)
