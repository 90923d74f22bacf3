"""3D-Resampler parity with the standalone reference cases, sincos tables, and its invariants."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from minicpmv.config import ResamplerConfig
from minicpmv.model.resampler import Resampler, sincos_1d, sincos_2d
from conftest import reference_path


@pytest.fixture(scope="module")
def reference() -> tuple[dict, dict[str, torch.Tensor]]:
    meta = json.loads(reference_path("resampler_cases.json").read_text())
    return meta, load_file(reference_path("resampler_cases.safetensors"))


def _reference_resampler(meta: dict, tensors: dict[str, torch.Tensor]) -> Resampler:
    c = meta["config"]
    cfg = ResamplerConfig(
        num_queries=c["num_queries"], embed_dim=c["embed_dim"], num_heads=c["num_heads"], kv_dim=c["kv_dim"],
        max_size=c["max_size"][0], layer_norm_eps=c["norm_eps"],
    )
    model = Resampler(cfg).eval()
    prefix = "state_dict/"
    model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
    return model


def test_every_reference_case(reference):
    meta, tensors = reference
    model = _reference_resampler(meta, tensors)
    for case in meta["cases"]:
        x, tgt = tensors[case["x_key"]], tensors[case["tgt_sizes_key"]]
        with torch.no_grad():
            out = model(x, tgt, case["temporal_ids"])
        torch.testing.assert_close(out, tensors[case["out_key"]], atol=1e-5, rtol=1e-5, msg=case["name"])


def test_sincos_tables_match_reference(reference):
    meta, tensors = reference
    dim = meta["config"]["embed_dim"]
    table = tensors["pos2d_table_70x70"]
    assert torch.equal(torch.from_numpy(sincos_2d(table.shape[0], table.shape[1], dim)), table)
    rows = sincos_1d(np.array(meta["temporal_table_row_ids"]), dim)
    assert torch.equal(torch.from_numpy(rows), tensors["temporal_table_rows"])


def test_sincos_layout_column_half_first():
    table = sincos_2d(3, 5, 8)  # [H, W, 8]
    assert np.array_equal(table[2, 4, :4], sincos_1d(np.array([4]), 4)[0])  # column w = 4
    assert np.array_equal(table[2, 4, 4:], sincos_1d(np.array([2]), 4)[0])  # row h = 2


def _tiny() -> Resampler:
    torch.manual_seed(0)
    model = Resampler(ResamplerConfig(num_queries=8, embed_dim=32, num_heads=2, kv_dim=16)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def test_buffers_are_not_in_state_dict():
    model = _tiny()
    names = set(model.state_dict())
    assert names == {n for n, _ in model.named_parameters()}
    assert {"query", "kv_proj.weight", "attn.in_proj_weight", "attn.in_proj_bias", "proj"} <= names


def test_padding_rows_are_ignored_and_groups_are_independent():
    """Garbage in padded rows changes nothing; a batch of groups equals each group run alone."""
    model = _tiny()
    tgt = torch.tensor([[3, 4], [3, 4], [2, 5], [4, 2], [1, 3], [2, 2]])
    groups = [[0, 5], [-1], [7, 9, 11]]
    x = torch.randn(6, 12, 16)
    noisy = x.clone()
    for i, (h, w) in enumerate(tgt.tolist()):
        noisy[i, h * w :] = 1e3 * torch.randn(12 - h * w, 16)
    with torch.no_grad():
        out = model(x, tgt, groups)
        torch.testing.assert_close(model(noisy, tgt, groups), out, atol=1e-5, rtol=1e-5)
        start = 0
        for g, group in enumerate(groups):
            part = slice(start, start + len(group))
            alone = model(x[part], tgt[part], [group])
            torch.testing.assert_close(alone[0], out[g], atol=1e-5, rtol=1e-5)
            start += len(group)


def test_temporal_ids_matter_only_inside_multi_frame_groups():
    model = _tiny()
    tgt = torch.tensor([[3, 3]] * 3)
    x = torch.randn(3, 9, 16)
    with torch.no_grad():
        base = model(x, tgt, [[1, 2, 3]])
        shifted = model(x, tgt, [[1, 2, 40]])
        assert (base - shifted).abs().max() > 1e-3
        single = model(x[:1], tgt[:1], [[500]])
        image = model(x[:1], tgt[:1], [[-1]])
        torch.testing.assert_close(single, image, atol=1e-5, rtol=1e-5)


def test_caches_grow_without_changing_values():
    model = _tiny()
    tgt = torch.tensor([[75, 1], [2, 2]])
    x = torch.randn(2, 75, 16)
    with torch.no_grad():
        big = model(x, tgt, [[-1], [80000]])
        fresh = _tiny()
        small = fresh(x[1:], tgt[1:], [[80000]])  # the 2x2 slice never needed the grown table
    torch.testing.assert_close(big[1], small[0], atol=1e-6, rtol=1e-6)
    assert model.pos_embed_1d.shape[0] >= 75


def test_bad_temporal_ids_are_rejected():
    model = _tiny()
    x, tgt = torch.randn(3, 4, 16), torch.tensor([[2, 2]] * 3)
    with pytest.raises(ValueError, match="cover 2 slices"):
        model(x, tgt, [[1, 2]])
    with pytest.raises(ValueError, match=">= 0"):
        model(x, tgt, [[1, 2, -5]])
