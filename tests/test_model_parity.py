"""MiniCPMV composition vs the tiny reference cases, batching with packed video, loss and training paths."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from minicpmv.errors import InputError
from minicpmv.model.kv_cache import KVCache
from minicpmv.model.minicpmv import MiniCPMV
from conftest import reference_path


@pytest.fixture(scope="module")
def model() -> MiniCPMV:
    return MiniCPMV.from_pretrained(reference_path("tiny_model")).eval()


@pytest.fixture(scope="module")
def cases() -> tuple[list[dict], dict[str, torch.Tensor]]:
    meta = json.loads(reference_path("tiny_model_cases.json").read_text())["cases"]
    return meta, load_file(reference_path("tiny_model_cases.safetensors"))


def _vision_cases(cases):
    meta, tensors = cases
    return [(c, tensors) for c in meta if c["tgt_sizes"]]


def _stored_vit_batch(case: dict, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored per-slice ViT outputs of a case, zero-padded into [n, L_max, D], and tgt_sizes."""
    tgt = tensors[f"{case['name']}/tgt_sizes"]
    rows = [tensors[f"{case['name']}/vision/{j:02d}"] for j in range(len(tgt))]
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), tgt


def test_resampler_on_stored_vit_outputs(model, cases):
    for case, tensors in _vision_cases(cases):
        x, tgt = _stored_vit_batch(case, tensors)
        with torch.no_grad():
            out = model.resampler(x, tgt, case["temporal_ids"])
        torch.testing.assert_close(out, tensors[f"{case['name']}/resampler_out"], atol=1e-5, rtol=1e-5, msg=case["name"])


def test_inputs_embeds(model, cases):
    """Text rows equal the embedding table exactly; span k holds resampler output k."""
    meta, tensors = cases
    for case in meta:
        name = case["name"]
        ids = tensors[f"{name}/input_ids"][None]  # [1, T]
        vision = [tensors[f"{name}/resampler_out"]] if case["tgt_sizes"] else None
        bounds = [tensors[f"{name}/image_bound"]] if case["tgt_sizes"] else None
        with torch.no_grad():
            got = model.embed(ids, image_bounds=bounds, vision_embeds=vision)[0]  # [T, D]
        ref = tensors[f"{name}/inputs_embeds"]
        visual = torch.zeros(len(ref), dtype=torch.bool)
        for start, end in case["image_bound"]:
            visual[start:end] = True
        assert torch.equal(got[~visual], ref[~visual]), name
        torch.testing.assert_close(got[visual], ref[visual], atol=1e-5, rtol=1e-5, msg=name)


def test_final_hidden_and_logits_from_stored_embeds(model, cases):
    meta, tensors = cases
    for case in meta:
        name = case["name"]
        with torch.no_grad():
            hidden = model.llm(tensors[f"{name}/inputs_embeds"][None])  # [1, T, D]
            logits = model.llm.logits(hidden[:, -3:])[0]  # [3, V]
        torch.testing.assert_close(hidden[0], tensors[f"{name}/final_hidden"], atol=1e-4, rtol=1e-4, msg=name)
        torch.testing.assert_close(logits, tensors[f"{name}/logits_last3"], atol=1e-4, rtol=1e-4, msg=name)


def test_greedy_tokens_from_stored_embeds(model, cases):
    """Prefill on the stored inputs_embeds, then 8 plain greedy steps with the KV cache."""
    meta, tensors = cases
    for case in meta:
        name = case["name"]
        ref = tensors[f"{name}/greedy_tokens"].tolist()
        embeds = tensors[f"{name}/inputs_embeds"][None]
        cache = KVCache.allocate(model.config.llm, 1, embeds.shape[1] + len(ref))
        tokens = []
        with torch.no_grad():
            logits = model.llm.logits(model.llm(embeds, cache=cache)[:, -1:])  # [1, 1, V]
            for _ in range(len(ref)):
                tokens.append(int(logits[0, -1].argmax()))
                step = model.llm.embed(torch.tensor([[tokens[-1]]]))
                logits = model.llm.logits(model.llm(step, cache=cache))
        assert tokens == ref, name


def _fake_item(case: dict, tensors, seed: int) -> dict:
    """One batch item with the case's ids/bounds/geometry and random pixels."""
    g = torch.Generator().manual_seed(seed)
    tgt = tensors[f"{case['name']}/tgt_sizes"]
    pixels = [torch.rand(3, 14 * int(h), 14 * int(w), generator=g) * 2 - 1 for h, w in tgt.tolist()]
    return dict(
        ids=tensors[f"{case['name']}/input_ids"], pixels=pixels, tgt=tgt,
        temporal=case["temporal_ids"], bounds=tensors[f"{case['name']}/image_bound"],
    )


def test_batch_with_packed_video_equals_items_alone(model, cases):
    """Two items with different group counts in one left-padded batch give each item's solo result."""
    meta, tensors = cases
    vision = [c for c in meta if c["tgt_sizes"]]
    pairs = [
        (a, b) for a in vision for b in vision
        if any(len(g) > 1 for g in a["temporal_ids"]) and len(b["temporal_ids"]) != len(a["temporal_ids"])
    ]
    if not pairs:
        pytest.skip("need a packed-video case and a second vision case with another number of groups")
    packed = [p for p in pairs if any(len(g) > 1 for g in p[1]["temporal_ids"])]  # prefer two packed videos
    first, second = (packed or pairs)[0]
    items = [_fake_item(first, tensors, 1), _fake_item(second, tensors, 2)]
    t = max(len(i["ids"]) for i in items)
    ids = torch.zeros(2, t, dtype=torch.long)
    mask = torch.zeros(2, t, dtype=torch.long)
    for b, item in enumerate(items):
        pad = t - len(item["ids"])
        ids[b, pad:], mask[b, pad:] = item["ids"], 1
        item["padded_bounds"] = item["bounds"] + pad
    with torch.no_grad():
        batch = model(
            ids, attention_mask=mask, pixel_values=[i["pixels"] for i in items], tgt_sizes=[i["tgt"] for i in items],
            temporal_ids=[i["temporal"] for i in items], image_bounds=[i["padded_bounds"] for i in items],
            num_logits_to_keep=1,
        ).logits
        for b, item in enumerate(items):
            alone = model(
                item["ids"][None], pixel_values=[item["pixels"]], tgt_sizes=[item["tgt"]],
                temporal_ids=[item["temporal"]], image_bounds=[item["bounds"]], num_logits_to_keep=1,
            ).logits
            torch.testing.assert_close(batch[b], alone[0], atol=1e-4, rtol=1e-4)


def test_span_and_group_counts_must_agree(model, cases):
    case, tensors = _vision_cases(cases)[0]
    ids = tensors[f"{case['name']}/input_ids"][None]
    bounds = tensors[f"{case['name']}/image_bound"]
    vision = tensors[f"{case['name']}/resampler_out"]
    with pytest.raises(InputError, match=f"{len(bounds) - 1} visual spans"):
        model.embed(ids, image_bounds=[bounds[:-1]], vision_embeds=[vision])


def test_loss_and_logits_to_keep():
    model = MiniCPMV.from_config("tiny", seed=3).eval()
    ids = torch.randint(0, 1000, (2, 9))
    labels = ids.clone()
    labels[:, :4] = -100
    with torch.no_grad():
        out = model(ids, labels=labels, output_hidden_states=True)
        last = model(ids, num_logits_to_keep=2).logits
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    assert out.hidden_states.shape == (2, 9, model.config.llm.hidden_size)
    assert last.shape == (2, 2, model.config.llm.vocab_size)
    torch.testing.assert_close(last, out.logits[:, -2:], atol=1e-5, rtol=1e-5)


def test_text_only_training_uses_every_parameter():
    """In training mode a text-only batch still gives every vision parameter a (zero) gradient."""
    model = MiniCPMV.from_config("tiny", seed=4)
    ids = torch.randint(0, 1000, (1, 6))
    with torch.no_grad():
        eval_loss = model.eval()(ids, labels=ids).loss
    model.train()
    loss = model(ids, labels=ids).loss
    loss.backward()
    torch.testing.assert_close(loss.detach(), eval_loss)
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, unused
    assert all(float(p.grad.abs().max()) == 0.0 for n, p in model.named_parameters() if not n.startswith("llm."))


def test_bfloat16_model_runs_and_tracks_float32(model, cases):
    """Pixels (float32) are cast to the vision dtype and every stage runs in bf16, close to float32."""
    meta, tensors = cases
    case = next(c for c in meta if c["tgt_sizes"] and any(len(g) > 1 for g in c["temporal_ids"]))
    item = _fake_item(case, tensors, 3)
    half = MiniCPMV.from_pretrained(reference_path("tiny_model"), dtype=torch.bfloat16)
    outs = []
    with torch.no_grad():
        for m in (model, half):
            vision = m.encode_vision(item["pixels"], item["tgt"], item["temporal"])  # [G, Q, D]
            logits = m(item["ids"][None], pixel_values=[item["pixels"]], tgt_sizes=[item["tgt"]],
                       temporal_ids=[item["temporal"]], image_bounds=[item["bounds"]], num_logits_to_keep=1).logits
            outs.append((vision, logits))
    (v32, l32), (v16, l16) = outs
    assert v16.dtype == l16.dtype == torch.bfloat16
    assert (v16.float() - v32).norm() / v32.norm() < 0.05
    assert (l16.float() - l32).norm() / l32.norm() < 0.05
