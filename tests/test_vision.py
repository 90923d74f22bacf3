"""Vision tower parity with the reference: bucketed position ids and per-slice ViT outputs."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from minicpmv.config import ModelConfig, ProcessorConfig, VisionConfig
from minicpmv.model.vision import SiglipVisionTower, bucket_ids_1d, position_ids_2d
from conftest import reference_path

ATOL = RTOL = 1e-5


@pytest.fixture(scope="module")
def vpm() -> SiglipVisionTower:
    model_dir = reference_path("tiny_model")
    cfg = ModelConfig.from_json(model_dir / "config.json")
    tower = SiglipVisionTower(cfg.vision).eval()
    state = load_file(model_dir / "model.safetensors")
    tower.load_state_dict({k.removeprefix("vpm."): v for k, v in state.items() if k.startswith("vpm.")}, strict=True)
    return tower


@pytest.fixture(scope="module")
def cases() -> tuple[list[dict], dict[str, torch.Tensor]]:
    meta = json.loads(reference_path("tiny_model_cases.json").read_text())["cases"]
    return meta, load_file(reference_path("tiny_model_cases.safetensors"))


@pytest.fixture(scope="module")
def pixels() -> tuple[list[dict], dict[str, torch.Tensor]]:
    meta = json.loads(reference_path("pixels.json").read_text())["images"]
    return meta, load_file(reference_path("pixels.safetensors"))


def test_bucket_ids_match_reference():
    ref = json.loads(reference_path("vision_position_ids.json").read_text())
    side = ref["num_patches_per_side"]
    for n, ids in ref["bucket_ids_1d"].items():
        assert bucket_ids_1d(int(n), side).tolist() == ids, f"side length {n}"
    for hw, ids in ref["examples_2d_hxw"].items():
        h, w = map(int, hw.split("x"))
        assert position_ids_2d(h, w, side).tolist() == ids, f"2D ids for {hw}"


def test_bucket_ids_are_cached():
    assert bucket_ids_1d(37, 70) is bucket_ids_1d(37, 70)


def _image_runs(case: dict, pixel_meta: list[dict]) -> list[tuple[dict, int]]:
    """(pixels.json image, first slice index in the case) for images whose slices we hold.

    Only image cases (every temporal group is [-1]) and only leading images whose earlier images
    are all in pixels.json, so the slice offset is known without a processor.
    """
    if any(g != [-1] for g in case["temporal_ids"]):
        return []
    by_png = {m["png"]: m for m in pixel_meta}
    images = [c["image"] for msg in case["input"]["msgs"] for c in msg["content"] if isinstance(c, dict)]
    runs, offset = [], 0
    for png in images:
        if png not in by_png:
            break
        runs.append((by_png[png], offset))
        offset += by_png[png]["num_slices"]
    return runs


def test_vit_matches_cases_from_stored_pixels(vpm, cases, pixels):
    """ViT output of every slice we have pixels for (a padded batch of differently sized slices)."""
    case_meta, tensors = cases
    pixel_meta, pix = pixels
    checked = 0
    for case in case_meta:
        for image, offset in _image_runs(case, pixel_meta):
            slices = [pix[s["key"]] for s in image["slices"]]
            tgt = pix[image["tgt_sizes_key"]]
            assert tgt.tolist() == case["tgt_sizes"][offset : offset + len(slices)], (case["name"], image["name"])
            with torch.no_grad():
                out = vpm(slices, tgt)
            for j in range(len(slices)):
                ref = tensors[f"{case['name']}/vision/{offset + j:02d}"]
                got = out.hidden[j, : int(out.lengths[j])]
                torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL, msg=f"{case['name']} slice {offset + j}")
                checked += 1
    if checked == 0:
        pytest.skip("no case uses an image whose pixels are stored in pixels.safetensors")


def test_padded_batch_equals_each_slice_alone(vpm, pixels):
    pixel_meta, pix = pixels
    slices = [pix[s["key"]] for m in pixel_meta for s in m["slices"]]
    tgt = torch.cat([pix[m["tgt_sizes_key"]] for m in pixel_meta])
    assert len({int(h) * int(w) for h, w in tgt}) > 1, "the stored slices should have different sizes"
    with torch.no_grad():
        batched = vpm(slices, tgt)
        for j, s in enumerate(slices):
            alone = vpm([s], tgt[j : j + 1])
            n = int(batched.lengths[j])
            assert alone.hidden.shape[1] == n
            torch.testing.assert_close(batched.hidden[j, :n], alone.hidden[0], atol=1e-5, rtol=1e-5)


def _case_slices(case: dict) -> list[torch.Tensor]:
    """Every ViT input slice of a case, in processor order, built with our processor from the PNGs.

    Video: for each temporal group, for each slice index, that slice of every frame of the group.
    """
    slicing = pytest.importorskip("minicpmv.processor.slicing", reason="the processor is not written yet")
    inp = case["input"]
    cfg = ProcessorConfig()
    msn = inp["max_slice_nums"] or cfg.max_slice_nums
    pngs = [c["image"] for msg in inp["msgs"] for c in msg["content"] if isinstance(c, dict)]
    per_image = [
        slicing.process_image(Image.open(reference_path(p)).convert("RGB"), cfg, max_slice_nums=msn).pixel_values
        for p in pngs
    ]
    if inp["temporal_ids"] is None:
        return [s for image in per_image for s in image]
    out, start = [], 0
    for group in inp["temporal_ids"]:
        frames = per_image[start : start + len(group)]
        start += len(group)
        out += [frame[j] for j in range(len(frames[0])) for frame in frames]
    return out


def test_vit_matches_cases_end_to_end_from_png(vpm, cases):
    case_meta, tensors = cases
    for case in case_meta:
        if not case["tgt_sizes"]:
            continue
        slices = _case_slices(case)
        tgt = torch.tensor(case["tgt_sizes"], dtype=torch.int32)
        with torch.no_grad():
            out = vpm(slices, tgt)
        for j in range(len(slices)):
            got = out.hidden[j, : int(out.lengths[j])]
            ref = tensors[f"{case['name']}/vision/{j:02d}"]
            torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL, msg=f"{case['name']} slice {j}")


def test_rejects_slice_that_disagrees_with_tgt_sizes():
    tower = SiglipVisionTower(VisionConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2))
    with pytest.raises(ValueError, match="tgt_sizes says 2x3"):
        tower([torch.zeros(3, 28, 28)], torch.tensor([[2, 3]]))
