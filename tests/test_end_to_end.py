"""End to end on the tiny reference model: PNGs + text -> Processor -> MiniCPMV -> logits and greedy tokens."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import REFERENCE_DIR, reference_path
from minicpmv.model.kv_cache import KVCache
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor


@pytest.fixture(scope="module")
def model() -> MiniCPMV:
    return MiniCPMV.from_pretrained(reference_path("tiny_model")).eval()


@pytest.fixture(scope="module")
def proc() -> Processor:
    return Processor.from_pretrained(reference_path("tiny_model"))


@pytest.fixture(scope="module")
def cases() -> tuple[list[dict], dict[str, torch.Tensor]]:
    meta = json.loads(reference_path("tiny_model_cases.json").read_text())["cases"]
    return meta, load_file(reference_path("tiny_model_cases.safetensors"))


def messages(case: dict) -> list[dict]:
    return [
        {"role": m["role"], "content": [c if isinstance(c, str) else {"type": "image", "image": str(REFERENCE_DIR / c["image"])}
                                        for c in m["content"]]}
        for m in case["input"]["msgs"]
    ]


def flags(case: dict) -> dict:
    i = case["input"]
    return dict(enable_thinking=i["enable_thinking"], system_prompt=i["system_prompt"], max_slice_nums=i["max_slice_nums"],
                use_image_id=i["use_image_id"], max_length=i["max_inp_length"])


def greedy(model: MiniCPMV, batch, steps: int) -> tuple[torch.Tensor, list[int]]:
    """Prefill the whole prompt, then `steps` plain argmax steps with the KV cache (reference README loop)."""
    cache = KVCache.allocate(model.config.llm, 1, batch.input_ids.shape[1] + steps)
    with torch.no_grad():
        logits = model(**batch, cache=cache, num_logits_to_keep=3).logits  # [1, 3, V]
        last3 = logits[0]
        tokens = []
        for _ in range(steps):
            tokens.append(int(logits[0, -1].argmax()))
            logits = model(input_ids=torch.tensor([[tokens[-1]]]), cache=cache, num_logits_to_keep=1).logits  # [1, 1, V]
    return last3, tokens


def test_cases_from_pngs(model, proc, cases):
    meta, tensors = cases
    assert meta
    for case in meta:
        name = case["name"]
        batch = proc(messages(case), temporal_ids=case["input"]["temporal_ids"], **flags(case))
        assert batch.input_ids[0].tolist() == case["input_ids"], name
        last3, tokens = greedy(model, batch, len(case["greedy_tokens"]))
        torch.testing.assert_close(last3, tensors[f"{name}/logits_last3"], atol=1e-4, rtol=1e-4, msg=name)
        assert tokens == case["greedy_tokens"], name


def test_all_cases_in_one_left_padded_batch(model, proc, cases):
    """Every case as one row of a padded batch (mixed images, packed videos, text) gives its own logits."""
    meta, tensors = cases
    by_flags: dict[tuple, list[dict]] = {}
    for case in meta:  # processor flags are per call: batch the cases that share them
        key = tuple(sorted((k, str(v)) for k, v in flags(case).items() if k != "max_length"))
        by_flags.setdefault(key, []).append(case)
    for group in by_flags.values():
        batch = proc([messages(c) for c in group], temporal_ids=[c["input"]["temporal_ids"] for c in group], **flags(group[0]))
        with torch.no_grad():
            logits = model(**batch, num_logits_to_keep=3).logits  # [B, 3, V]
        for b, case in enumerate(group):
            torch.testing.assert_close(logits[b, -3:], tensors[f"{case['name']}/logits_last3"], atol=1e-4, rtol=1e-4,
                                       msg=case["name"])
