import pytest
import torch
import torch.nn.functional as F

from scaling_train.models import GPT, ModelConfig
from tests.fixtures.tolerances import sum_rtol


def _model(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(**{"size": "0.2M", "vocab_size": 97, "seq_len": 32, "loss_impl": "torch", **kw})
    return GPT(cfg)


def test_loss_equals_cross_entropy_of_logits():
    m = _model()
    idx = torch.randint(0, 97, (3, 32))
    tgt = torch.randint(0, 97, (3, 32))
    logits = m(idx)
    assert logits.shape == (3, 32, 97)
    out = m(idx, tgt)
    ref = F.cross_entropy(logits.reshape(-1, 97).double(), tgt.reshape(-1))
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.token_correct, (logits.argmax(-1) == tgt).reshape(-1))


def test_causal():
    m = _model()
    idx = torch.randint(0, 97, (1, 32))
    a = m(idx)
    idx2 = idx.clone()
    idx2[0, 20:] = (idx2[0, 20:] + 1) % 97
    b = m(idx2)
    torch.testing.assert_close(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_doc_mask_blocks_attention_across_documents():
    m = _model(attn_doc_mask=True)
    idx = torch.randint(0, 97, (1, 32))
    seg = torch.tensor([[0] * 16 + [1] * 16])
    h1 = m.hidden_states(idx, seg)
    idx2 = idx.clone()
    idx2[0, :16] = (idx2[0, :16] + 5) % 97  # change document 0 only
    h2 = m.hidden_states(idx2, seg)
    torch.testing.assert_close(h1[:, 16:], h2[:, 16:])  # document 1 cannot see document 0


def test_segment_nll_sums_per_document():
    m = _model()
    idx = torch.randint(0, 97, (2, 32))
    tgt = torch.randint(0, 97, (2, 32))
    seg = torch.tensor([[0] * 10 + [1] * 22, [2] * 32])
    out = m(idx, tgt, seg, num_segments=3)
    nll = out.token_nll.view(2, 32).double()
    ref = torch.stack([nll[0, :10].sum(), nll[0, 10:].sum(), nll[1].sum()])  # float64 sums of the same NLLs
    # segment_nll adds up to 32 positive float32 terms
    torch.testing.assert_close(out.segment_nll.double(), ref, rtol=sum_rtol(32), atol=0)
    assert out.segment_tokens.tolist() == [10, 22, 32]


def test_depth_scaled_init():
    m = _model()
    std_proj = m.blocks[0].attn.proj.weight.std().item()
    std_qkv = m.blocks[0].attn.qkv.weight.std().item()
    assert std_proj < std_qkv * 0.7  # 0.02 / sqrt(2 * n_layers) vs 0.02


def test_mup_groups_scale_lr_with_width():
    base = _model(mup=True, mup_base_width=96)  # 0.2M has d_model=96: m = 1
    wide = _model(size=None, d_model=192, n_layers=2, n_heads=6, d_ff=512, mup=True, mup_base_width=96)
    g_base = {g["name"]: g["lr"] for g in base.param_groups(1e-2, 0.1)}
    g_wide = {g["name"]: g["lr"] for g in wide.param_groups(1e-2, 0.1)}
    assert g_base["hidden"] == pytest.approx(1e-2)
    assert g_wide["hidden"] == pytest.approx(5e-3)  # lr / m with m = 2
    assert g_wide["embedding"] == g_base["embedding"] == pytest.approx(1e-2)
    # readout: zero-init head gives uniform logits at init, and the 1/m multiplier is applied
    idx = torch.randint(0, 97, (1, 8))
    assert torch.allclose(wide(idx), torch.zeros(1, 8, 97))


def test_mup_activations_width_stable():
    """Under muP the scale of the pre-head hidden state does not grow with width."""
    torch.manual_seed(0)
    idx = torch.randint(0, 97, (4, 32))
    scales = []
    for d in (96, 384):
        m = _model(
            size=None,
            d_model=d,
            n_layers=2,
            n_heads=d // 32,
            d_ff=(8 * d // 3 + 31) // 32 * 32,
            mup=True,
            mup_base_width=96,
        )
        scales.append(m.hidden_states(idx).abs().mean().item() * d / 96)
    assert 0.5 < scales[1] / scales[0] < 2.0


def test_bad_model_config_messages():
    with pytest.raises(ValueError, match=r"n_heads=5 must divide model.d_model=96"):
        ModelConfig(size="0.2M", n_heads=5)
    with pytest.raises(ValueError, match="seq_len"):
        ModelConfig(size="0.2M", seq_len=1)
    m = _model()
    with pytest.raises(ValueError, match="exceeds model.seq_len=32"):
        m(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("mup", [False, True])
def test_kv_cache_decoding_equals_full_forward(mup):
    from scaling_train.models.gpt import KVCache

    kw = {"mup": True, "mup_base_width": 32} if mup else {}
    m = _model(**kw).eval()
    idx = torch.randint(0, 97, (3, 32))
    with torch.no_grad():
        full = m(idx)  # (3, 32, V)
        cache = KVCache()
        parts = [m(idx[:, :10], cache=cache)]  # prefill 10
        parts += [m(idx[:, t : t + 1], cache=cache) for t in range(10, 20)]  # one token at a time
        parts.append(m(idx[:, 20:32], cache=cache))  # a chunk of 12 after the cache
    assert cache.pos == 32
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="sequence length 1 after 32 cached tokens exceeds model.seq_len=32"):
        m(idx[:, :1], cache=cache)
    with pytest.raises(ValueError, match="segment_ids with a KV cache"):
        m.hidden_states(idx[:, :4], torch.zeros(3, 4, dtype=torch.int64), cache=KVCache())
