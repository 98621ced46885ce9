import math

import pytest
import torch

from scaling_train.models import GPT, LADDER, ModelConfig, parse_size, shape_for, sizes


def test_hand_count_matches_numel():
    # d=64, 2 layers, d_ff=96, V=100, untied: count by hand
    cfg = ModelConfig(size=None, d_model=64, n_layers=2, n_heads=4, d_ff=96, vocab_size=100)
    model = GPT(cfg)
    per_layer = 64 * 3 * 64 + 64 * 64 + 3 * 64 * 96 + 2 * 64  # qkv + proj + SwiGLU + 2 norms = 34,944
    assert per_layer == 34_944
    non_emb = 2 * per_layer + 64  # + final norm
    counts = model.param_counts()
    assert counts["non_embedding"] == non_emb == sizes.non_embedding_params(cfg.shape)
    assert counts["total"] == sum(p.numel() for p in model.parameters()) == non_emb + 2 * 100 * 64
    assert sizes.total_params(cfg.shape, 100, tie_embeddings=False) == counts["total"]


def test_tied_embeddings_count():
    cfg = ModelConfig(size="0.2M", vocab_size=300, tie_embeddings=True)
    model = GPT(cfg)
    assert model.param_counts()["total"] == sum(p.numel() for p in model.parameters())
    assert model.param_counts()["embedding"] == 300 * cfg.d_model
    assert sizes.total_params(cfg.shape, 300, tie_embeddings=True) == model.param_counts()["total"]


def test_flops_per_token_hand_count():
    shape = sizes.Shape(d_model=64, n_layers=2, n_heads=4, d_ff=96)
    n = 2 * 34_944 + 64
    assert sizes.flops_per_token(shape, 128) == 6 * n + 6 * 2 * 128 * 64
    assert sizes.flops_per_token(shape, 128, vocab_size=100) == 6 * n + 6 * 2 * 128 * 64 + 6 * 64 * 100


@pytest.mark.parametrize("name", LADDER)
def test_ladder_hits_target_and_is_valid(name):
    target = parse_size(name)
    shape = shape_for(target)
    n = sizes.non_embedding_params(shape)
    assert abs(n / target - 1) < (0.25 if target < 1e6 else 0.15), (name, shape, n)  # layers are discrete
    assert shape.d_model % shape.n_heads == 0 and shape.head_dim % 2 == 0
    assert 20 <= shape.d_model / shape.n_layers <= 200 or shape.n_layers <= 3  # aspect ratio band


def test_ladder_monotone_and_spans_1m_to_3b():
    ns = [sizes.non_embedding_params(shape_for(parse_size(s))) for s in LADDER]
    assert ns == sorted(ns)
    assert ns[0] < 1e6 and ns[-1] > 2.5e9


def test_parse_size_forms_and_errors():
    assert parse_size("3.2M") == 3.2e6
    assert parse_size("1B") == 1e9
    assert parse_size(2e7) == 2e7
    assert parse_size("3.2e7") == 3.2e7
    with pytest.raises(ValueError, match="not a size"):
        parse_size("big")
    with pytest.raises(ValueError, match="outside"):
        parse_size("100T")


def test_model_param_count_equals_family_for_ladder_small():
    for name in ("0.2M", "1M", "5M"):
        cfg = ModelConfig(size=name, vocab_size=512)
        with torch.device("meta"):
            model = GPT(cfg)
        assert model.param_counts()["non_embedding"] == sizes.non_embedding_params(cfg.shape)


def test_aspect_ratio_rule_documented_constant():
    shape = shape_for(1e8)
    assert math.isclose(shape.d_model / shape.n_layers, sizes.ASPECT_RATIO, rel_tol=0.25)


def test_tiny_targets_get_their_own_narrow_shapes():
    # below two layers of width 64 (0.107M) the rule offers widths 32 and 48 (head_dim 16), 2+ layers
    got = {t: shape_for(t) for t in (2.7e4, 4e4, 5.5e4)}
    assert got[2.7e4] == sizes.Shape(32, 2, 2, 96) and got[5.5e4] == sizes.Shape(48, 2, 3, 128)
    for t, s in got.items():
        n = sizes.non_embedding_params(s)
        assert abs(n / t - 1) < 0.1 and s.head_dim == 16 and s.n_layers >= 2, (t, s, n)
        GPT(ModelConfig(size=str(t), vocab_size=300, seq_len=32))  # a valid model
    # from 0.1M up nothing changed (run names and config hashes of existing sweeps stay)
    assert shape_for(1e5) == sizes.Shape(64, 2, 2, 192) and shape_for(2e5) == sizes.Shape(96, 2, 3, 256)
    with pytest.raises(ValueError, match="outside"):
        parse_size("1e4")
