"""Video-QA efficiency: MiniCPM-V 4.5 vs Qwen2.5-VL-7B on the same synthetic video (issue 9, item 4).

    .venv/bin/python benchmarks/video_efficiency.py                 # CPU: bf16, a 1.6 s 448p clip, 1 ViT + 1 LLM layer
    .venv/bin/python benchmarks/video_efficiency.py --device cuda   # GPU: full depth, 1, 5 and 30 min 448p videos
        [--durations 1.6,3] [--size 448x448] [--source-fps 30] [--vit-layers N] [--llm-layers N] [--full-depth]
        [--new-tokens 16] [--first-frames N] [--dtype bfloat16] [--threads N] [--models ours,qwen] [--json PATH] [--smoke]

The paper's claim (spec §8): on Video-MME, MiniCPM-V 4.5 needs 8.7% of the inference time and 46.7% of the GPU
memory of Qwen2.5-VL-7B. Here both models answer one question about the same video, each with its official
video settings: ours samples 5 fps, packs up to 3 frames per 64-token group, at most 180 groups (spec §5.1);
Qwen2.5-VL samples 2 fps, 4..768 frames, merges 2 frames x 2x2 patches per token (spec §7.2). The frame
counts and token counts are exactly those of `minicpmv.eval.tokens` (docs/tokens.md).

Models: real widths and random weights, built on the meta device and filled in place. Ours is
`PRESETS["minicpmv-4.5"]`; Qwen2.5-VL-7B is built with `transformers` (optional: the `bench` extra) from its
public config.json values written below. `--vit-layers` / `--llm-layers` keep that many layers of each model
(the same number for both, all widths real); every other part (patch embedding, resampler / merger,
embeddings, LM head) is whole. Forward hooks time the kept layers, and times are also extrapolated to the
full depth: total + (full / kept - 1) x time in kept layers, separately for the ViT and the LLM.

The video is synthetic (numpy frames: a gradient and a moving square, drawn per sampled frame index), so
no decoder differs between the models; pre-processing (resize, normalise, patchify) is done before timing.
Each model runs in its own child process, one after the other, never both at once. Measured per model:
prefill = vision encoder + projector + LLM over the whole prompt + the first token (time to first token);
decode = `new-tokens` more greedy tokens with the KV cache; memory = peak RSS of the child during the run
(CPU, /proc VmHWM reset after the build) or peak CUDA memory allocated (GPU), and the resident size after the
build. On a shared CPU wall times inflate with the load; process CPU time (all threads) is printed too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minicpmv.config import PRESETS, ProcessorConfig
from minicpmv.eval import tokens
from minicpmv.eval.tokens import VideoSpec

QUESTION = "Which way does the square move, and what colour is it at the end of the video?"
FULL_DEPTH = {"ours": (27, 36), "qwen": (32, 28)}  # (ViT layers, LLM layers) of the real models

# Qwen2.5-VL-7B-Instruct `config.json` (public facts; nothing can be downloaded here). 8.29B parameters.
QWEN_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "hidden_act": "silu", "rms_norm_eps": 1e-6, "vocab_size": 152064,
    "max_position_embeddings": 128000, "rope_theta": 1000000.0, "tie_word_embeddings": False,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "use_sliding_window": False,
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "image_token_id": 151655, "video_token_id": 151656, "torch_dtype": "bfloat16",
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "hidden_act": "silu", "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                      "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2},
}
QWEN_MEAN, QWEN_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


# ---- the video ----------------------------------------------------------------------------------

def synthetic_frame(index: int, width: int, height: int, n_frames: int) -> np.ndarray:
    """uint8[H, W, 3] frame `index` of an `n_frames` video: a fixed gradient and a square moving left to right
    whose colour goes from red to blue. Any frame is drawn on its own, so a 30-minute video costs nothing."""
    t = index / max(n_frames - 1, 1)  # 0 .. 1 over the video
    ys, xs = np.mgrid[0:height, 0:width]
    frame = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), np.full_like(xs, 96)], -1)
    side = max(8, min(width, height) // 5)
    x0, y0 = int(t * (width - side)), (height - side) // 2
    frame[y0:y0 + side, x0:x0 + side] = (int(255 * (1 - t)), 40, int(255 * t))
    return frame.astype(np.uint8)  # (H, W, 3)


# ---- timing and memory --------------------------------------------------------------------------

class LayerClock:
    """Wall and process-CPU seconds spent inside the modules of some ModuleLists, per phase ('prefill'/'decode')."""

    def __init__(self, groups: dict[str, torch.nn.ModuleList], sync):
        self.phase, self.sync, self.seconds = "prefill", sync, {}
        for name, layers in groups.items():
            for layer in layers:
                layer.register_forward_pre_hook(self._start)
                layer.register_forward_hook(self._stopper(name))

    def _start(self, module, args):
        self.sync()
        module._clock = (time.perf_counter(), time.process_time())

    def _stopper(self, name: str):
        def stop(module, args, output):
            self.sync()
            wall, cpu = module._clock
            key = f"{name}_{self.phase}"
            w, c = self.seconds.get(key, (0.0, 0.0))
            self.seconds[key] = (w + time.perf_counter() - wall, c + time.process_time() - cpu)
        return stop


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class Memory:
    """Resident memory (CPU: VmRSS / VmHWM of this process) or CUDA memory allocated, in bytes."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else _status_kib("VmRSS") * 1024

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated() if self.cuda else _status_kib("VmHWM") * 1024


def timed(sync, fn):
    """(result, wall seconds, process CPU seconds) of fn()."""
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    return out, time.perf_counter() - wall, time.process_time() - cpu


# ---- our model ------------------------------------------------------------------------------------

def ours_config(vit_layers: int, llm_layers: int, smoke: bool):
    base = PRESETS["tiny"] if smoke else PRESETS["minicpmv-4.5"]
    return base.replace(vision=replace(base.vision, num_layers=vit_layers), llm=replace(base.llm, num_layers=llm_layers))


def ours_inputs(spec: VideoSpec, device: torch.device, first_frames: int | None = None):
    """The processor's batch for the question about the video, sampled by the official recipe; with
    `first_frames`, only that many of the sampled frames, grouped as the recipe groups them for this video."""
    from minicpmv.demo import DEMO_DIR
    from minicpmv.processor.processor import Processor
    from minicpmv.processor.tokenizer import Tokenizer
    from minicpmv.processor.video import Video, sample_video

    sampling = sample_video(spec.n_frames, spec.fps, choose_fps=5)
    indices, groups = sampling.frame_indices, sampling.temporal_ids
    if first_frames:
        ids = [t for g in groups for t in g][:first_frames]
        indices, groups = indices[:first_frames], [ids[i:i + sampling.packing] for i in range(0, len(ids), sampling.packing)]
    drawn = {i: Image.fromarray(synthetic_frame(i, spec.width, spec.height, spec.n_frames)) for i in sorted(set(indices))}
    frames = [drawn[i] for i in indices]
    # The demo tokenizer holds every marker token; only the ~20 question tokens would differ with the real one.
    proc = Processor(Tokenizer.from_pretrained(DEMO_DIR), ProcessorConfig())
    batch = proc([{"role": "user", "content": [Video(frames=frames, temporal_ids=groups), QUESTION]}])
    return batch.to(device), len(frames)


def run_ours(args, device: torch.device, dtype: torch.dtype, sync) -> dict:
    from minicpmv.model.kv_cache import KVCache
    from minicpmv.model.minicpmv import MiniCPMV

    spec = VideoSpec.of(args.duration, *args.wh, args.source_fps)
    batch, n_frames = ours_inputs(spec, device, args.first_frames)
    memory = Memory(device)
    cfg = ours_config(args.vit_layers, args.llm_layers, args.smoke)
    model, build_s, _ = timed(sync, lambda: MiniCPMV.from_config(cfg, dtype=dtype, device=device))
    with torch.device("meta"):
        full_params = sum(p.numel() for p in MiniCPMV(ours_config(*FULL_DEPTH["ours"], args.smoke)).parameters())
    clock = LayerClock({"vit": model.vpm.encoder.layers, "llm": model.llm.model.layers}, sync) if args.hooks else None
    ids = batch.input_ids  # [1, T]
    after_build = memory.now()
    memory.reset_peak()
    with torch.inference_mode():
        cache = KVCache.allocate(cfg.llm, 1, ids.shape[1] + args.new_tokens + 1, dtype=dtype, device=device)

        def prefill():
            out = model(ids, pixel_values=batch.pixel_values, tgt_sizes=batch.tgt_sizes, temporal_ids=batch.temporal_ids,
                        image_bounds=batch.image_bounds, cache=cache, num_logits_to_keep=1)
            return out.logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]

        def decode(token):
            for _ in range(args.new_tokens):
                token = model(token, cache=cache, num_logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
            return token

        token, prefill_s, prefill_cpu = timed(sync, prefill)
        if clock:
            clock.phase = "decode"
        _, decode_s, decode_cpu = timed(sync, lambda: decode(token))
    per_token_kv = 2 * cfg.llm.num_kv_heads * cfg.llm.head_dim * torch.finfo(dtype).bits // 8  # one layer, K and V
    return dict(model="MiniCPM-V 4.5", frames=n_frames, visual_tokens=int((batch.image_bounds[0][:, 1] - batch.image_bounds[0][:, 0]).sum()),
                prompt_tokens=ids.shape[1], vit_patches=int(torch.cat(batch.tgt_sizes).prod(1).sum()),
                prefill_s=prefill_s, prefill_cpu=prefill_cpu, decode_s=decode_s, decode_cpu=decode_cpu,
                layers=clock.seconds if clock else {}, build_s=build_s, params=sum(p.numel() for p in model.parameters()),
                full_params=full_params, kv_bytes_per_token_layer=per_token_kv, mem_after_build=after_build,
                mem_peak=memory.peak())


# ---- Qwen2.5-VL-7B --------------------------------------------------------------------------------

def qwen_config(vit_layers: int, llm_layers: int, smoke: bool):
    from transformers import Qwen2_5_VLConfig

    d = json.loads(json.dumps(QWEN_7B))
    d["num_hidden_layers"], d["vision_config"]["depth"] = llm_layers, vit_layers
    d["vision_config"]["fullatt_block_indexes"] = [i for i in QWEN_7B["vision_config"]["fullatt_block_indexes"] if i < vit_layers]
    if smoke:  # plumbing check only: tiny widths, the real vocabulary
        d.update(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                 rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
        d["vision_config"].update(hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    cfg = Qwen2_5_VLConfig.from_dict(d)
    cfg._attn_implementation = "sdpa"
    return cfg


def build_qwen(cfg, dtype: torch.dtype, device: torch.device, std: float = 0.02):
    """Qwen2_5_VLForConditionalGeneration built on the meta device, materialised on `device`, filled N(0, std)
    (norm weights 1, biases 0); the rotary tables (non-persistent buffers) are recomputed."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    model = model.to(dtype=dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name.rsplit(".", 2)[-2]:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=gen)
        for module in model.modules():
            if "inv_freq" in module._buffers:
                fresh = type(module)(module.config).to(device)  # the rotary classes take their config
                module.inv_freq, module.original_inv_freq = fresh.inv_freq, fresh.original_inv_freq
    return model.eval()


def qwen_inputs(spec: VideoSpec, text_ids: tuple[list[int], list[int]], device: torch.device, dtype: torch.dtype,
                first_frames: int | None = None):
    """input_ids, pixel_values_videos [grid_t*grid_h*grid_w, 3*2*14*14], video_grid_thw, second_per_grid_ts.

    Frames as qwen_vl_utils samples them (round(linspace(0, n - 1, frames))), resized (PIL bicubic) to the size
    `tokens.qwen_video_size` gives, normalised with the CLIP mean/std, cut into 2 x 14 x 14 patches ordered by
    2 x 2 merge window (the Qwen2-VL image processor's layout).
    """
    frames, h, w = tokens.qwen_video_size(spec)
    seconds_per_step = 2 / (frames / spec.duration_s)  # temporal patch / sampling fps (Qwen2.5-VL's time ids)
    idx = np.linspace(0, spec.n_frames - 1, frames).round().astype(int)
    if first_frames:  # the first of the sampled frames, at the size chosen for the whole video
        idx, frames = idx[:first_frames], min(frames, first_frames)
    video = np.stack([np.asarray(Image.fromarray(synthetic_frame(i, spec.width, spec.height, spec.n_frames))
                                 .resize((w, h), Image.Resampling.BICUBIC)) for i in idx])  # (T, H, W, 3)
    x = (video.astype(np.float32) / 255 - np.array(QWEN_MEAN, np.float32)) / np.array(QWEN_STD, np.float32)
    gt, gh, gw = frames // 2, h // 14, w // 14
    x = x.transpose(0, 3, 1, 2).reshape(gt, 2, 3, gh // 2, 2, 14, gw // 2, 2, 14)  # (t, 2, C, h/2, 2, 14, w/2, 2, 14)
    patches = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gt * gh * gw, 3 * 2 * 14 * 14)
    n_tokens = gt * gh * gw // 4
    pre, post = text_ids
    ids = pre + [QWEN_7B["vision_start_token_id"]] + [QWEN_7B["video_token_id"]] * n_tokens + [QWEN_7B["vision_end_token_id"]] + post
    return dict(input_ids=torch.tensor([ids], device=device),
                pixel_values_videos=torch.from_numpy(patches).to(device, dtype),
                video_grid_thw=torch.tensor([[gt, gh, gw]], device=device),
                second_per_grid_ts=torch.tensor([seconds_per_step], device=device)), frames, n_tokens


def text_around_video() -> tuple[list[int], list[int]]:
    """Token ids of the chat text before and after the visual part of our prompt (the same text for both models)."""
    spec = VideoSpec.of(0.4, 32, 32, 10.0)
    batch, _ = ours_inputs(spec, torch.device("cpu"))
    ids, bounds = batch.input_ids[0].tolist(), batch.image_bounds[0]
    return ids[:int(bounds[0, 0]) - 1], ids[int(bounds[-1, 1]) + 1:]


def run_qwen(args, device: torch.device, dtype: torch.dtype, sync) -> dict:
    from transformers.generation.streamers import BaseStreamer

    spec = VideoSpec.of(args.duration, *args.wh, args.source_fps)
    inputs, frames, n_tokens = qwen_inputs(spec, text_around_video(), device, dtype, args.first_frames)
    memory = Memory(device)
    cfg = qwen_config(args.vit_layers, args.llm_layers, args.smoke)
    model, build_s, _ = timed(sync, lambda: build_qwen(cfg, dtype, device))
    full_cfg = qwen_config(*FULL_DEPTH["qwen"], args.smoke)
    from transformers import Qwen2_5_VLForConditionalGeneration
    with torch.device("meta"):
        full_params = sum(p.numel() for p in Qwen2_5_VLForConditionalGeneration(full_cfg).parameters())
    inner = model.model
    clock = LayerClock({"vit": inner.visual.blocks, "llm": inner.language_model.layers}, sync) if args.hooks else None
    marks: list[tuple[float, float]] = []

    class Marks(BaseStreamer):  # generate() calls put() with the prompt, then with every new token
        def put(self, value):
            sync()
            marks.append((time.perf_counter(), time.process_time()))
            if clock and len(marks) == 2:
                clock.phase = "decode"

        def end(self):
            pass

    after_build = memory.now()
    memory.reset_peak()
    new = args.new_tokens + 1
    with torch.inference_mode():
        sync()
        start = (time.perf_counter(), time.process_time())
        model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, streamer=Marks(),
                       pad_token_id=QWEN_7B["eos_token_id"])
    # marks[0]: generate() hands over the prompt (the vision encoder may already have run: transformers 5 encodes
    # the video while preparing the inputs), marks[1]: the first new token. Prefill = call -> first token.
    first = marks[1]
    text = cfg.text_config if hasattr(cfg, "text_config") else cfg
    per_token_kv = 2 * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads) * torch.finfo(dtype).bits // 8
    prefill_s = first[0] - start[0]
    return dict(model="Qwen2.5-VL-7B", frames=frames, visual_tokens=n_tokens, prompt_tokens=inputs["input_ids"].shape[1],
                vit_patches=int(inputs["pixel_values_videos"].shape[0]), prefill_s=prefill_s,
                prefill_cpu=first[1] - start[1], decode_s=marks[-1][0] - first[0], decode_cpu=marks[-1][1] - first[1],
                layers=clock.seconds if clock else {}, build_s=build_s, params=sum(p.numel() for p in model.parameters()),
                full_params=full_params, kv_bytes_per_token_layer=per_token_kv, mem_after_build=after_build,
                mem_peak=memory.peak(), before_prompt_s=marks[0][0] - start[0])


# ---- parent: one child per model, then the comparison -----------------------------------------------

def child_main(args) -> None:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    load_before = os.getloadavg()[0]
    result = (run_ours if args.child == "ours" else run_qwen)(args, device, dtype, sync)
    result.update(load_before=load_before, load_after=os.getloadavg()[0], threads=torch.get_num_threads())
    print("RESULT " + json.dumps(result), flush=True)


def run_child(model: str, duration: float, args) -> dict:
    cmd = [sys.executable, __file__, "--child", model, "--durations", str(duration), "--size", args.size,
           "--source-fps", str(args.source_fps), "--vit-layers", str(args.vit_layers), "--llm-layers", str(args.llm_layers),
           "--new-tokens", str(args.new_tokens), "--dtype", args.dtype, "--device", args.device,
           "--threads", str(args.threads or 0)] + (["--smoke"] if args.smoke else []) + \
          (["--first-frames", str(args.first_frames)] if args.first_frames else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{model} child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def extrapolate(r: dict, key: str, args) -> dict:
    """Times and memory at the real depth (= measured when every layer was kept)."""
    vit_full, llm_full = FULL_DEPTH[key]
    lay = r["layers"]
    out = {}
    for i, kind in ((0, "s"), (1, "cpu")):
        vit, llm_pre, llm_dec = (lay.get(k, (0.0, 0.0))[i] for k in ("vit_prefill", "llm_prefill", "llm_decode"))
        out[f"prefill_{kind}"] = r[f"prefill_{kind}"] + (vit_full / args.vit_layers - 1) * vit + (llm_full / args.llm_layers - 1) * llm_pre
        out[f"decode_{kind}"] = r[f"decode_{kind}"] + (llm_full / args.llm_layers - 1) * llm_dec
    bytes_per_param = torch.finfo(getattr(torch, args.dtype)).bits // 8
    kv_more = r["kv_bytes_per_token_layer"] * (r["prompt_tokens"] + args.new_tokens + 1) * (llm_full - args.llm_layers)
    out["mem_peak"] = r["full_params"] * bytes_per_param + (r["mem_peak"] - r["mem_after_build"]) + kv_more
    return out


def report(duration: float, results: dict[str, dict], args) -> None:
    """Print one video's rows (measured, and at full depth when layers were dropped) and the ratios ours / Qwen."""
    ours, qwen = results["ours"], results["qwen"]
    first = f", the first {args.first_frames} sampled frames only" if args.first_frames else ""
    print(f"\n== {duration:g} s video, {args.size}, {args.source_fps:g} fps source{first} ==")
    print(f"{'model':<15} {'frames':>6} {'visual tok':>10} {'prompt tok':>10} {'ViT patches':>11} "
          f"{'prefill s':>9} {'(cpu s)':>9} {'decode s':>8} {'(cpu s)':>9} {'after build GB':>14} {'peak GB':>8} {'load':>9}")
    for r in (ours, qwen):
        print(f"{r['model']:<15} {r['frames']:>6} {r['visual_tokens']:>10,} {r['prompt_tokens']:>10,} {r['vit_patches']:>11,} "
              f"{r['prefill_s']:>9.2f} {r['prefill_cpu']:>9.2f} {r['decode_s']:>8.2f} {r['decode_cpu']:>9.2f} "
              f"{r['mem_after_build'] / 1e9:>14.2f} {r['mem_peak'] / 1e9:>8.2f} {r['load_before']:>4.1f}-{r['load_after']:<4.1f}")
    ratio = lambda k: ours[k] / qwen[k]
    print(f"ours / Qwen (measured, {args.vit_layers} ViT + {args.llm_layers} LLM layers): visual tokens "
          f"{ratio('visual_tokens'):.3f}, prefill {ratio('prefill_s'):.3f} (cpu {ratio('prefill_cpu'):.3f}), "
          f"decode {ratio('decode_s'):.3f}, prefill+decode {(ours['prefill_s'] + ours['decode_s']) / (qwen['prefill_s'] + qwen['decode_s']):.3f}, "
          f"peak memory {ratio('mem_peak'):.3f}")
    if not args.full_depth:
        o, q = extrapolate(ours, "ours", args), extrapolate(qwen, "qwen", args)
        for name, r, full in (("MiniCPM-V 4.5", ours, o), ("Qwen2.5-VL-7B", qwen, q)):
            print(f"  {name} at full depth: prefill {full['prefill_s']:.1f} s (cpu {full['prefill_cpu']:.1f}), "
                  f"decode {full['decode_s']:.1f} s, memory ~{full['mem_peak'] / 1e9:.2f} GB "
                  f"({r['full_params'] / 1e9:.2f}B parameters; layers timed: {', '.join(f'{k} {v[0]:.2f} s' for k, v in r['layers'].items())})")
        total = (o["prefill_s"] + o["decode_s"]) / (q["prefill_s"] + q["decode_s"])
        print(f"ours / Qwen (extrapolated to full depth): prefill {o['prefill_s'] / q['prefill_s']:.3f} "
              f"(cpu {o['prefill_cpu'] / q['prefill_cpu']:.3f}), decode {o['decode_s'] / q['decode_s']:.3f}, "
              f"prefill+decode {total:.3f}, memory {o['mem_peak'] / q['mem_peak']:.3f}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--durations", default=None, help="video lengths in seconds, comma-separated "
                   "(default: 1.6 on CPU; 60,300,1800 on CUDA)")
    p.add_argument("--size", default="448x448", help="frame size WxH")
    p.add_argument("--source-fps", type=float, default=30.0)
    p.add_argument("--vit-layers", type=int, default=None, help="ViT layers kept in both models (default: 1 on CPU)")
    p.add_argument("--llm-layers", type=int, default=None, help="LLM layers kept in both models (default: 1 on CPU)")
    p.add_argument("--full-depth", action="store_true", help="every layer (27/36 ours, 32/28 Qwen); default on CUDA")
    p.add_argument("--new-tokens", type=int, default=16, help="greedy decode steps after the first token")
    p.add_argument("--first-frames", type=int, default=None, help="only the first N (even) of each model's sampled "
                   "frames, with the settings chosen for the whole video (long videos at CPU cost)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per child (default: torch's)")
    p.add_argument("--models", default="ours,qwen")
    p.add_argument("--json", type=Path, default=None, help="also write every result here")
    p.add_argument("--smoke", action="store_true", help="tiny widths: checks the plumbing in seconds, measures nothing")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.full_depth = args.full_depth or (cuda and args.vit_layers is None and args.llm_layers is None)
    args.durations = args.durations or ("60,300,1800" if cuda else "1.6")
    if args.full_depth:
        args.vit_layers = args.llm_layers = None
    args.vit_layers = args.vit_layers or 1
    args.llm_layers = args.llm_layers or 1
    args.hooks = not args.full_depth
    args.wh = tokens.parse_size(args.size)
    if args.first_frames is not None and (args.first_frames < 2 or args.first_frames % 2):
        p.error(f"--first-frames must be an even number >= 2 (Qwen2.5-VL packs frames in pairs), got {args.first_frames}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    durations = [float(d) for d in args.durations.split(",")]
    if args.child:
        if args.full_depth:
            args.vit_layers, args.llm_layers = FULL_DEPTH[args.child]
        args.duration = durations[0]
        child_main(args)
        return
    models = args.models.split(",")
    depth = "full depth" if args.full_depth else f"{args.vit_layers} ViT + {args.llm_layers} LLM layer(s) kept per model"
    print(f"device {args.device}, {args.dtype}, {depth}, {args.new_tokens} decode tokens, threads "
          f"{args.threads or torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}"
          + (" -- SMOKE: tiny widths, numbers mean nothing" if args.smoke else ""))
    everything = []
    for duration in durations:
        results = {}
        for model in models:
            results[model] = run_child(model, duration, args)  # one at a time, in its own process
        everything.append({"duration_s": duration, **results})
        if set(results) == {"ours", "qwen"}:
            report(duration, results, args)
        else:
            print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "json"}, "runs": everything},
                                        indent=1, default=str))


if __name__ == "__main__":
    main()
