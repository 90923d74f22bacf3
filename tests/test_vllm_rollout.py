"""vLLM rollouts (`minicpmv.rl.vllm_rollout`) against a fake `vllm` module with vLLM's call shapes.

The fake (`FakeVLLM` below) mirrors the offline API the module uses: `LLM(model=folder, tokenizer=,
trust_remote_code=, dtype=, gpu_memory_utilization=, limit_mm_per_prompt=, enforce_eager=, seed=)`,
`LLM.generate(prompts, sampling_params, use_tqdm=)` with prompts as dicts holding "prompt" (+
"multi_modal_data" {"image": PIL or [PIL]}, "mm_processor_kwargs") or "prompt_token_ids", and one
`SamplingParams` per prompt; it returns `RequestOutput`s whose `.outputs[k]` are `CompletionOutput`s
(index, text, token_ids with the stop id kept, logprobs as {id: Logprob}, finish_reason 'stop' /
'length'); `collective_rpc("reload_weights")` re-reads the folder; `reset_prefix_cache()`. Like vLLM,
it serves the weights it finds in the exported folder, expands `(<image>./</image>)` tags into the
official placeholders, seeds sample k of a request with seed + k and returns raw log-probs. So these
tests check the whole path: export -> load -> requests -> outputs -> `Rollout`s, and that refreshed
weights reach the server (the log-prob gap to teacher forcing collapses after a refresh).

The real test needs CUDA, vLLM and MINICPMV_VLLM_MODEL (a MiniCPM-V 4.5 folder with its remote-code
files); it skips, saying which is missing, elsewhere (it has not run on the machine it was written on).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from conftest import reference_path
from minicpmv.errors import InputError
from minicpmv.inference.types import SamplingParams
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor import slicing
from minicpmv.processor.processor import Processor, expand_image_tags, find_image_bounds
from minicpmv.rl import vllm_rollout as vr
from minicpmv.rl.rollout import RLPrompt, encode_prompt, rollout_logprobs

# Remote-code modules of the official repository and the relative imports inside them (stub contents).
CODE_FILES = {
    "configuration_minicpm.py": "from .modeling_navit_siglip import SiglipVisionConfig\n",
    "modeling_navit_siglip.py": "",
    "modeling_minicpmv.py": "from .configuration_minicpm import MiniCPMVConfig\nfrom .resampler import Resampler\n",
    "resampler.py": "",
    "processing_minicpmv.py": "from .image_processing_minicpmv import MiniCPMVBatchFeature\n",
    "image_processing_minicpmv.py": "",
    "tokenization_minicpmv_fast.py": "",
}


# ---- the fake vllm -------------------------------------------------------------------------------------
class FakeSamplingParams:
    """vllm.SamplingParams: keyword fields only (a TypeError on unknown ones, as vLLM's struct gives)."""

    def __init__(self, *, n: int = 1, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 min_p: float = 0.0, max_tokens: int | None = 16, min_tokens: int = 0, seed: int | None = None,
                 stop_token_ids: list[int] | None = None, skip_special_tokens: bool = True,
                 logprobs: int | None = None):
        self.n, self.temperature, self.top_p, self.top_k, self.min_p = n, temperature, top_p, top_k, min_p
        self.max_tokens, self.min_tokens, self.seed = max_tokens, min_tokens, seed
        self.stop_token_ids, self.skip_special_tokens, self.logprobs = stop_token_ids or [], skip_special_tokens, logprobs


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool = True


class FakeLLM:
    instances: list["FakeLLM"] = []

    def __init__(self, model: str, *, tokenizer: str | None = None, trust_remote_code: bool = False,
                 dtype: str = "auto", gpu_memory_utilization: float = 0.9, limit_mm_per_prompt: dict | None = None,
                 enforce_eager: bool = False, seed: int = 0, max_model_len: int | None = None):
        if not trust_remote_code:
            raise ValueError("MiniCPM-V needs trust_remote_code=True")
        self.folder, self.kwargs = Path(model), dict(dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                                     limit_mm_per_prompt=limit_mm_per_prompt, seed=seed)
        self.processor = Processor.from_pretrained(tokenizer or model)
        self.calls: list[tuple[list[dict], list[FakeSamplingParams]]] = []
        self.rpcs: list[str] = []
        self._load()
        FakeLLM.instances.append(self)

    def _load(self) -> None:
        self.model = MiniCPMV.from_pretrained(self.folder)  # the weights as stored (their dtype)

    def collective_rpc(self, method: str, *args: Any) -> list[Any]:
        self.rpcs.append(method)
        if method == "reload_weights":
            self._load()
        return [None]

    def reset_prefix_cache(self) -> bool:
        self.rpcs.append("reset_prefix_cache")
        return True

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True) -> list[RequestOutput]:
        prompts = [prompts] if isinstance(prompts, dict) else list(prompts)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        assert len(params) == len(prompts) and all(isinstance(p, FakeSamplingParams) for p in params)
        self.calls.append((prompts, params))
        return [self._request(i, p, sp) for i, (p, sp) in enumerate(zip(prompts, params))]

    def _request(self, i: int, prompt: dict, sp: FakeSamplingParams) -> RequestOutput:
        ids, vision = self._inputs(prompt)
        with torch.no_grad():
            feats = None if vision is None else self.model.vision_per_item([vision[0]], [vision[1]], None)
            outs = [self._sample(ids, feats, vision, sp, k) for k in range(sp.n)]
        return RequestOutput(str(i), prompt.get("prompt"), ids, None, outs)

    def _inputs(self, prompt: dict):
        """Prompt ids (tags expanded into the official placeholders) and (slices, tgt_sizes, bounds)."""
        if "prompt_token_ids" in prompt:
            assert "multi_modal_data" not in prompt
            return list(prompt["prompt_token_ids"]), None
        images = prompt["multi_modal_data"]["image"]
        images = images if isinstance(images, list) else [images]
        msn = prompt.get("mm_processor_kwargs", {}).get("max_slice_nums")
        done = [self.processor.process_image(im, msn) for im in images]
        cfg = self.processor.cfg
        marks = [slicing.image_placeholder(d.grid, k if cfg.use_image_id else None, cfg.image_feature_size)
                 for k, d in enumerate(done)]
        ids = self.processor.tokenizer.encode(expand_image_tags(prompt["prompt"], marks).text)
        slices = [s for d in done for s in d.pixel_values]
        return ids, (slices, torch.cat([d.tgt_sizes for d in done]), find_image_bounds(ids, self.processor.tokenizer))

    def _sample(self, ids, feats, vision, sp: FakeSamplingParams, k: int) -> CompletionOutput:
        gen = torch.Generator().manual_seed(sp.seed + k) if sp.seed is not None else None
        out, lps, reason = [], [], "length"
        for _ in range(sp.max_tokens):
            row = torch.tensor([ids + out])
            bounds = None if vision is None else [vision[2]]
            logits = self.model(row, image_bounds=bounds, vision_embeds=feats, num_logits_to_keep=1).logits[0, -1].float()
            logp = logits.log_softmax(-1)  # raw log-probs, as vLLM returns by default
            if sp.temperature == 0:
                tok = int(logits.argmax())
            else:
                tok = int(torch.multinomial((logits / sp.temperature).softmax(-1), 1, generator=gen))
            out.append(tok)
            lps.append({tok: Logprob(float(logp[tok]), rank=1)})
            if tok in sp.stop_token_ids:
                reason = "stop"  # vLLM keeps the stop id in token_ids (the text drops it)
                break
        text = self.processor.tokenizer.decode(out[:-1] if reason == "stop" else out)
        return CompletionOutput(k, text, out, sum(next(iter(d.values())).logprob for d in lps), lps, reason)


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(vr, "_cuda_available", lambda: True)
    FakeLLM.instances = []
    return module


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: tiny models run fastest on one thread


@pytest.fixture(scope="module")
def processor() -> Processor:
    return Processor.from_pretrained(reference_path("tiny_model"))


@pytest.fixture
def proc_dir(tmp_path) -> Path:
    """The tiny reference model's folder plus the official remote-code file names (stubs)."""
    src, dst = reference_path("tiny_model"), tmp_path / "processor"
    dst.mkdir()
    for f in src.iterdir():  # symlinks: the copy of the weights would only cost time
        (dst / f.name).symlink_to(f)
    for name, text in CODE_FILES.items():
        (dst / name).write_text(text)
    return dst


@pytest.fixture
def policy(proc_dir) -> MiniCPMV:
    return MiniCPMV.from_pretrained(proc_dir)


def _prompts(tmp_path: Path, processor: Processor) -> tuple[list[RLPrompt], list]:
    image = Image.new("RGB", (64, 48), (200, 40, 40))
    messages = [[{"role": "user", "content": [image, "What colour is it?"]}],
                [{"role": "user", "content": "What is 2 + 3?"}]]
    prompts = [RLPrompt(m, "5", f"prompt {i}", {}, tmp_path) for i, m in enumerate(messages)]
    return prompts, [encode_prompt(processor, p, mode) for p, mode in zip(prompts, ("short", "long"))]


# ---- the folder ------------------------------------------------------------------------------------------
def test_export_round_trips_in_bf16_without_touching_the_policy(policy, proc_dir, tmp_path):
    folder = vr.export_policy(policy, proc_dir, tmp_path / "served", torch.bfloat16)
    assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "bfloat16"
    loaded = MiniCPMV.from_pretrained(folder)
    want = policy.state_dict()
    assert loaded.state_dict().keys() == want.keys()
    for name, t in loaded.state_dict().items():
        assert t.dtype == torch.bfloat16 and torch.equal(t, want[name].to(torch.bfloat16)), name
    assert next(policy.parameters()).dtype == torch.float32  # the live policy is not converted
    assert all((folder / f).is_file() for f in [*CODE_FILES, "tokenizer.json", "preprocessor_config.json"])
    assert (folder / "tokenizer.json").read_bytes() == (proc_dir / "tokenizer.json").read_bytes()


def test_missing_remote_code_follows_relative_imports(proc_dir, policy):
    auto_map = policy.config.to_hf_dict()["auto_map"]
    assert vr.missing_remote_code(proc_dir, auto_map) == []
    (proc_dir / "resampler.py").unlink()  # imported by modeling_minicpmv.py only
    (proc_dir / "tokenization_minicpmv_fast.py").unlink()  # named by tokenizer_config.json's auto_map
    assert vr.missing_remote_code(proc_dir, auto_map) == ["resampler.py", "tokenization_minicpmv_fast.py"]
    assert "configuration_minicpm.py" in vr.missing_remote_code(reference_path("tiny_model"), auto_map)


# ---- guards ----------------------------------------------------------------------------------------------
def test_clear_errors_without_vllm_without_cuda_or_without_remote_code(monkeypatch, fake_vllm, policy, processor):
    settings = vr.VLLMSettings("unused")
    with pytest.raises(InputError, match="remote_code.*configuration_minicpm.py.*openbmb/MiniCPM-V-4_5"):
        vr.VLLMRollouts(settings, processor, reference_path("tiny_model"), policy.config)
    monkeypatch.setattr(vr, "_cuda_available", lambda: False)
    with pytest.raises(InputError, match="needs a CUDA GPU.*--rollout-backend engine"):
        vr.require_vllm()
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(InputError, match=r"pip install 'minicpmv\[vllm\]'"):
        vr.require_vllm()
    with pytest.raises(InputError, match="refresh_every"):
        vr.VLLMSettings("x", refresh_every=0)


def test_sampling_params_and_requests(fake_vllm, tmp_path, processor):
    tok = processor.tokenizer
    ours = SamplingParams(max_new_tokens=7, temperature=1.0, top_p=0.9, top_k=0, n=8, seed=5)
    sp = vr.vllm_sampling_params(fake_vllm, ours, 5, tok.stop_ids)
    assert (sp.n, sp.temperature, sp.top_p, sp.top_k, sp.max_tokens, sp.seed, sp.logprobs) == (8, 1.0, 0.9, 0, 7, 5, 0)
    assert sp.stop_token_ids == [tok.im_end_id, tok.pad_id] and sp.skip_special_tokens is False
    with pytest.raises(InputError, match="beam"):
        vr.vllm_sampling_params(fake_vllm, SamplingParams(num_beams=2, temperature=0.0), None, tok.stop_ids)
    prompts, encoded = _prompts(tmp_path, processor)
    image_req = vr.vllm_request(encoded[0], vr.prompt_images(processor, prompts[0], encoded[0]), 4)
    assert image_req["prompt"] == encoded[0].chat_text and image_req["prompt"].count("(<image>./</image>)") == 1
    assert isinstance(image_req["multi_modal_data"]["image"], Image.Image)
    assert image_req["mm_processor_kwargs"] == {"max_slice_nums": 4}
    assert vr.vllm_request(encoded[1], [], None) == {"prompt_token_ids": encoded[1].input_ids}
    video = encoded[0].__class__(**{**encoded[0].__dict__, "temporal_ids": [[0, 3]]})
    with pytest.raises(InputError, match="video.*--rollout-backend engine"):
        vr.prompt_images(processor, prompts[0], video)


# ---- outputs ---------------------------------------------------------------------------------------------
def test_outputs_become_rollouts_by_hand(tmp_path, processor):
    tok = processor.tokenizer
    _, encoded = _prompts(tmp_path, processor)
    a, b, c = tok.encode("four"), tok.encode("fi"), tok.encode("ve!")

    def lp(ids):
        return [{t: Logprob(-0.5 - i)} for i, t in enumerate(ids)]

    outputs = [
        RequestOutput("0", None, encoded[0].input_ids, None, [  # given out of order: sorted by index
            CompletionOutput(1, "", b + c, None, lp(b + c), "length"),
            CompletionOutput(0, "four", a + [tok.im_end_id], None, lp(a + [tok.im_end_id]), "stop", None)]),
        RequestOutput("1", None, encoded[1].input_ids, None, [
            CompletionOutput(0, "", a + [tok.pad_id], None, None, "stop"),  # <|endoftext|> recorded as <|im_end|>
            CompletionOutput(1, "", [], None, None, "stop")]),
    ]
    rollouts = vr.to_rollouts(outputs, encoded, ["short", "long"], 2, tok)
    got = [(r.group, r.mode, r.response_ids, r.text, r.finish_reason, r.sampler_logprobs) for r in rollouts]
    assert got == [
        (0, "short", a + [tok.im_end_id], "four", "stop", [-0.5 - i for i in range(len(a))]),
        (0, "short", b + c, "five!", "length", [-0.5 - i for i in range(len(b + c))]),
        (1, "long", a + [tok.im_end_id], "four", "stop", None),
        (1, "long", [tok.im_end_id], "", "stop", None),
    ]
    assert rollouts[2].prompt is encoded[1] and rollouts[2].assistant_text == "<think>\nfour"
    with pytest.raises(RuntimeError, match="expected n=3"):
        vr.to_rollouts(outputs, encoded, ["short", "long"], 3, tok)


# ---- end to end against the fake server --------------------------------------------------------------
def test_rollouts_from_the_served_policy_and_weight_refresh(fake_vllm, policy, proc_dir, tmp_path, processor):
    settings = vr.VLLMSettings(str(tmp_path / "served"), refresh_every=2, dtype="float32", seed=3)
    server = vr.VLLMRollouts(settings, processor, proc_dir, policy.config)
    prompts, encoded = _prompts(tmp_path, processor)
    params = SamplingParams(max_new_tokens=5, temperature=1.0, top_p=1.0, top_k=0, n=2, seed=100)

    assert server.refresh(policy, 0)
    llm = FakeLLM.instances[0]
    assert llm.folder == tmp_path / "served" and llm.kwargs["limit_mm_per_prompt"] == {"image": 8}
    rollouts = server.generate(prompts, encoded, ["short", "long"], params, max_slice_nums=4)
    requests, sampling = llm.calls[-1]
    assert "prompt" in requests[0] and requests[1] == {"prompt_token_ids": encoded[1].input_ids}
    assert [s.seed for s in sampling] == [100, 102]  # prompt g: seed + g * n (vLLM seeds sample k with seed + k)
    assert [(r.group, r.mode) for r in rollouts] == [(0, "short"), (0, "short"), (1, "long"), (1, "long")]
    assert all(1 <= len(r.response_ids) <= 6 and r.finish_reason in ("stop", "length") for r in rollouts)
    assert rollouts[0].response_ids != rollouts[1].response_ids  # two samples, two seeds

    with torch.no_grad():
        fresh = server.stats(rollouts, rollout_logprobs(policy, rollouts))
    assert fresh["vllm/prompt_mismatch"] == 0.0  # the fake expands the tags like vLLM: the same ids as ours
    assert fresh["vllm/logprob_gap"] < 1e-3  # served float32 weights = the policy

    with torch.no_grad():
        policy.llm.lm_head.weight.mul_(3.0)  # an "update"
        stale = server.stats(rollouts, rollout_logprobs(policy, rollouts))["vllm/logprob_gap"]
    assert stale > 0.1
    assert not server.refresh(policy, 1)  # refresh_every 2: still serving step 0's weights
    assert server.refresh(policy, 2) and llm.rpcs == ["reload_weights", "reset_prefix_cache"]
    assert len(FakeLLM.instances) == 1  # reloaded in place, not restarted
    rollouts = server.generate(prompts, encoded, ["short", "long"], params)
    with torch.no_grad():
        assert server.stats(rollouts, rollout_logprobs(policy, rollouts))["vllm/logprob_gap"] < 1e-3
    server.close()
    assert server.llm is None


# ---- on a real GPU with vLLM -----------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (vLLM runs only there)")
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm >= 0.10.2 (pip install 'minicpmv[vllm]')")
@pytest.mark.skipif(not os.environ.get("MINICPMV_VLLM_MODEL"),
                    reason="set MINICPMV_VLLM_MODEL to a MiniCPM-V 4.5 folder (weights + remote-code files)")
def test_real_vllm_rollouts(tmp_path):
    folder = Path(os.environ["MINICPMV_VLLM_MODEL"])
    policy = MiniCPMV.from_pretrained(folder, dtype=torch.bfloat16, device="cuda")
    processor = Processor.from_pretrained(folder)
    server = vr.VLLMRollouts(vr.VLLMSettings(str(tmp_path / "served"), gpu_memory_utilization=0.45,
                                             max_model_len=4096), processor, folder, policy.config)
    prompts, encoded = _prompts(tmp_path, processor)
    params = SamplingParams(max_new_tokens=32, temperature=1.0, top_p=1.0, top_k=0, n=4, seed=0)
    server.refresh(policy, 0)
    rollouts = server.generate(prompts, encoded, ["short", "long"], params)
    assert len(rollouts) == 8 and all(r.response_ids for r in rollouts)
    with torch.no_grad():
        stats = server.stats(rollouts, rollout_logprobs(policy, rollouts))
    assert stats["vllm/prompt_mismatch"] == 0.0, "vLLM tokenised a prompt differently from our processor"
    assert stats["vllm/logprob_gap"] < 0.1, stats  # bf16 on both sides
    server.close()


def test_rl_recipe_option_picks_the_backend(monkeypatch, fake_vllm, policy, proc_dir, processor, tmp_path):
    from minicpmv.rl.cli import RLArgs
    from minicpmv.train.cli import load_recipe

    start_vllm = load_recipe("rl").start_vllm
    env = types.SimpleNamespace(is_main=True)
    assert start_vllm(RLArgs(), processor, proc_dir, policy, env) is None  # default: our engine
    args = RLArgs(rollout_backend="vllm", out_dir=str(tmp_path / "run"), vllm_refresh_every=4)
    server = start_vllm(args, processor, proc_dir, policy, env)
    assert server.settings.folder == str(tmp_path / "run" / "vllm_policy") and server.settings.refresh_every == 4
    with pytest.raises(InputError, match="use engine or vllm"):
        start_vllm(RLArgs(rollout_backend="sglang"), processor, proc_dir, policy, env)
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(InputError, match="needs vllm"):
        start_vllm(args, processor, proc_dir, policy, env)
