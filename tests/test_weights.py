"""Checkpoint layout and I/O: official names/shapes on meta, strict loading, save/load round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from minicpmv.config import PRESETS, ModelConfig
from minicpmv.model.minicpmv import MiniCPMV
from conftest import reference_path


def test_real_preset_on_meta_has_the_official_layout():
    layout = json.loads(reference_path("checkpoint_layout", "param_shapes.json").read_text())
    with torch.device("meta"):
        model = MiniCPMV(PRESETS["minicpmv-4.5"])
    state = model.state_dict()
    expected = {p["name"]: p["shape"] for p in layout["params"]}
    assert len(state) == len(expected) == int(layout["num_tensors"])
    assert {n: list(t.shape) for n, t in state.items()} == expected
    assert sum(t.numel() for t in state.values()) == int(layout["num_params"])
    for prefix, count in layout["params_per_prefix"].items():
        assert sum(t.numel() for n, t in state.items() if n.startswith(prefix + ".")) == count, prefix
    assert not any(n in state for n in layout["non_persistent_buffers"])


def test_real_config_json_gives_the_preset():
    cfg = ModelConfig.from_json(reference_path("checkpoint_layout", "config.json"))
    assert cfg.vision == PRESETS["minicpmv-4.5"].vision
    assert cfg.resampler == PRESETS["minicpmv-4.5"].resampler
    assert cfg.llm == PRESETS["minicpmv-4.5"].llm


def test_tiny_reference_loads_strictly_and_exactly():
    folder = reference_path("tiny_model")
    model = MiniCPMV.from_pretrained(folder)
    stored = load_file(folder / "model.safetensors")
    state = model.state_dict()
    assert state.keys() == stored.keys()
    assert all(torch.equal(state[n], stored[n]) for n in stored)
    assert model.resampler.attn.num_heads == json.loads((folder / "config.json").read_text())["resampler_num_heads"]
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def _assert_same_weights(a: MiniCPMV, b: MiniCPMV) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name


@pytest.fixture(scope="module")
def tiny() -> MiniCPMV:
    return MiniCPMV.from_config("tiny", seed=1)


def test_round_trip_single_file(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
    loaded = MiniCPMV.from_pretrained(tmp_path)
    _assert_same_weights(tiny, loaded)
    assert loaded.config.llm == tiny.config.llm and loaded.config.vision == tiny.config.vision
    assert loaded.config.resampler == tiny.config.resampler


def test_round_trip_sharded(tiny, tmp_path):
    tiny.save_pretrained(tmp_path, max_shard_size="2MB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted({*index["weight_map"].values()})
    assert len(shards) > 2
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    assert set(index["weight_map"]) == set(tiny.state_dict())
    sizes = sum(t.numel() * t.element_size() for t in tiny.state_dict().values())
    assert index["metadata"]["total_size"] == sizes
    for shard in shards:
        with safe_open(tmp_path / shard, "pt") as f:
            assert f.metadata() == {"format": "pt"}
            assert all(index["weight_map"][k] == shard for k in f.keys())
    assert not (tmp_path / "model.safetensors").exists()
    _assert_same_weights(tiny, MiniCPMV.from_pretrained(tmp_path))


def test_dtype_is_kept_or_converted(tmp_path):
    model = MiniCPMV.from_config("tiny", dtype=torch.bfloat16, seed=2)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    same = MiniCPMV.from_pretrained(tmp_path)
    _assert_same_weights(model, same)
    wide = MiniCPMV.from_pretrained(tmp_path, dtype=torch.float32)
    assert {t.dtype for t in wide.state_dict().values()} == {torch.float32}
    assert all(torch.equal(wide.state_dict()[n].bfloat16(), t) for n, t in model.state_dict().items())


def test_recomputed_buffers_match_a_fresh_build(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    loaded = MiniCPMV.from_pretrained(tmp_path)
    fresh = dict(tiny.named_buffers())
    for name, buf in loaded.named_buffers():
        assert torch.equal(buf, fresh[name]), name


def _rewrite(folder: Path, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_tampered_checkpoints_are_rejected_with_every_name(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    q = tiny.state_dict()["llm.model.layers.0.self_attn.q_proj.weight"]

    def tamper(t: dict[str, torch.Tensor]) -> None:
        del t["resampler.proj"]
        t["vpm.post_layernorm.bias"] = torch.zeros(3)
        t["llm.model.layers.0.self_attn.q_proj.weight"] = q[:, :-1].contiguous()
        t["llm.extra.weight"] = torch.zeros(2, 2)

    _rewrite(tmp_path, tamper)
    with pytest.raises(ValueError) as err:
        MiniCPMV.from_pretrained(tmp_path)
    message = str(err.value)
    for expected in [
        "resampler.proj", "vpm.post_layernorm.bias", "llm.model.layers.0.self_attn.q_proj.weight", "llm.extra.weight",
        str(list(q.shape)), str([q.shape[0], q.shape[1] - 1]), "[3]",
    ]:
        assert expected in message, (expected, message)


@pytest.mark.parametrize("problem", ["missing", "shape", "extra"])
def test_each_tampering_alone_is_rejected(tiny, tmp_path, problem):
    tiny.save_pretrained(tmp_path, max_shard_size="2MB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    name = "vpm.encoder.layers.1.mlp.fc1.weight"
    shard = tmp_path / index["weight_map"][name]
    tensors = load_file(shard)
    if problem == "missing":
        del tensors[name]
    elif problem == "shape":
        tensors[name] = tensors[name].t().contiguous()
    else:
        name = "vpm.encoder.layers.9.mlp.fc1.weight"
        tensors[name] = torch.zeros(1)
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        MiniCPMV.from_pretrained(tmp_path)


def test_fan_in_init_scales_matrices_by_their_inputs():
    model = MiniCPMV.from_config("tiny", seed=0, init="fan_in")
    params = dict(model.named_parameters())
    q = params["llm.model.layers.0.self_attn.q_proj.weight"]  # [out, in]
    assert q.std().item() == pytest.approx(q.shape[1] ** -0.5, rel=0.1)
    patch = params["vpm.embeddings.patch_embedding.weight"]  # [out, 3, p, p]
    assert patch.std().item() == pytest.approx(patch[0].numel() ** -0.5, rel=0.1)
    proj = params["resampler.proj"]  # [in, out]
    assert proj.std().item() == pytest.approx(proj.shape[0] ** -0.5, rel=0.1)
    qkv = params["resampler.attn.in_proj_weight"]  # [3D, D], a bare Parameter (not a Linear)
    assert qkv.std().item() == pytest.approx(qkv.shape[1] ** -0.5, rel=0.1)
    for name in ("llm.model.embed_tokens.weight", "resampler.query"):  # tables keep N(0, 0.02)
        assert params[name].std().item() == pytest.approx(0.02, rel=0.1)
    assert params["llm.model.norm.weight"].eq(1).all() and params["vpm.encoder.layers.0.self_attn.q_proj.bias"].eq(0).all()
    normal = dict(MiniCPMV.from_config("tiny", seed=0).named_parameters())
    assert normal["llm.model.layers.0.self_attn.q_proj.weight"].std().item() == pytest.approx(0.02, rel=0.1)
    with pytest.raises(ValueError, match="init scheme"):
        MiniCPMV.from_config("tiny", init="xavier")
