"""Generation engine on the tiny reference model: cache vs recomputation, batching, dynamic joins,
streaming, stop rules, seeds, n samples, beam search vs brute force, vision cache, cancellation."""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import replace

import pytest
import torch
from PIL import Image
from torch import nn

from minicpmv.config import PRESETS
from minicpmv.errors import InputError
from minicpmv.inference.engine import Engine, EngineLoop, Request, VisionInputs, check_request, scan_stop_strings
from minicpmv.inference.types import SamplingParams
from minicpmv.inference.vision_cache import VisionCache, group_key, split_groups
from minicpmv.model.minicpmv import MiniCPMV, MiniCPMVOutput
from minicpmv.processor.processor import Processor
from conftest import REFERENCE_DIR, reference_path

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def model() -> MiniCPMV:
    return MiniCPMV.from_pretrained(reference_path("tiny_model"))


@pytest.fixture(scope="module")
def proc() -> Processor:
    return Processor.from_pretrained(reference_path("tiny_model"))


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return json.loads(reference_path("tiny_model_cases.json").read_text())["cases"]


def png(rel: str) -> Image.Image:
    with Image.open(REFERENCE_DIR / rel) as im:
        return im.convert("RGB")


def case_request(proc: Processor, case: dict, params: SamplingParams = GREEDY) -> Request:
    """The engine request of a reference case, built from its PNGs exactly like the reference chat()."""
    i = case["input"]
    msgs = [{"role": m["role"], "content": [c if isinstance(c, str) else png(c["image"]) for c in m["content"]]}
            for m in i["msgs"]]
    sample = proc.encode(msgs, enable_thinking=i["enable_thinking"], system_prompt=i["system_prompt"],
                         max_slice_nums=i["max_slice_nums"], use_image_id=i["use_image_id"],
                         temporal_ids=i["temporal_ids"], max_length=i["max_inp_length"])
    assert sample.input_ids == case["input_ids"], case["name"]
    vision = None
    if len(sample.image_bounds):
        vision = VisionInputs(sample.image_bounds, sample.pixel_values, sample.tgt_sizes, sample.temporal_ids)
    return Request(sample.input_ids, params, vision)


@pytest.fixture(scope="module")
def case_requests(proc, cases) -> list[Request]:
    return [case_request(proc, c) for c in cases]


@pytest.fixture(scope="module")
def alone(model, proc, case_requests) -> list[list[int]]:
    """Greedy tokens of every reference case, each run alone."""
    engine = Engine(model, proc.tokenizer)
    return [tokens(engine, r)[0] for r in case_requests]


def text_request(proc: Processor, text: str, params: SamplingParams = GREEDY) -> Request:
    return Request(proc.encode([{"role": "user", "content": text}]).input_ids, params)


def tokens(engine: Engine, *requests: Request) -> list[list[int]]:
    return [out.completions[0].token_ids for out in engine.generate(list(requests))]


def greedy_by_recomputation(model: MiniCPMV, req: Request, steps: int, stops: tuple[int, ...]) -> list[int]:
    """No KV cache: the whole sequence goes through the model again for every new token."""
    ids, out = list(req.prompt_ids), []
    v = req.vision
    bounds = [v.image_bounds] if v else None
    with torch.no_grad():
        feats = model.vision_per_item([v.pixel_values], [v.tgt_sizes], [v.temporal_ids]) if v else [None]
        for _ in range(steps):
            logits = model(torch.tensor([ids]), image_bounds=bounds, vision_embeds=feats, num_logits_to_keep=1).logits
            t = int(logits[0, -1].argmax())
            if t in stops:
                break
            ids.append(t)
            out.append(t)
    return out


# ---- correctness of the decode loop --------------------------------------------------------------


def test_greedy_with_cache_equals_recomputation_and_the_reference(model, proc, cases, case_requests, alone):
    stops = proc.tokenizer.stop_ids
    for case, req, got in zip(cases, case_requests, alone):
        ref = list(itertools.takewhile(lambda t: t not in stops, case["greedy_tokens"]))
        assert got == ref, case["name"]
        assert got == greedy_by_recomputation(model, req, len(ref), stops), case["name"]


def test_padded_batch_of_all_cases_equals_each_alone(model, proc, case_requests, alone):
    """Text, sliced image, two images, packed videos, thinking: one left-padded prefill, same tokens."""
    assert len({len(r.prompt_ids) for r in case_requests}) > 1, "the batch should need padding"
    assert tokens(Engine(model, proc.tokenizer), *case_requests) == alone


def test_request_joining_mid_flight_gets_the_same_tokens(model, proc, case_requests, alone):
    """Dynamic batching: newcomers are prefilled and merged into the running cache (shorter and longer)."""
    engine = Engine(model, proc.tokenizer)
    order = sorted(range(len(case_requests)), key=lambda i: len(case_requests[i].prompt_ids))
    mid, short, long = order[len(order) // 2], order[0], order[-1]
    first = engine.add_request(case_requests[mid])
    for _ in range(3):
        engine.step()
    later = {engine.add_request(case_requests[short]): short, engine.add_request(case_requests[long]): long}
    got: dict[int, list[int]] = {}
    while engine.has_work:
        got.update({e.request_id: e.completion.token_ids for e in engine.step() if e.completion is not None})
    assert got[first] == alone[mid]
    assert {i: got[rid] for rid, i in later.items()} == {i: alone[i] for i in later.values()}


def test_finished_rows_leave_the_batch(model, proc):
    engine = Engine(model, proc.tokenizer)
    engine.add_request(text_request(proc, "one", replace(GREEDY, max_new_tokens=2)))
    engine.add_request(text_request(proc, "a longer second prompt", replace(GREEDY, max_new_tokens=5)))
    engine.step()
    assert engine.num_rows == 2
    engine.step()  # the first request reaches max_new_tokens
    assert engine.num_rows == 1 and engine._cache.batch_size == 1
    while engine.has_work:
        engine.step()
    assert engine.num_rows == 0


def test_seeded_sampling_is_reproducible_alone_or_batched(model, proc):
    engine = Engine(model, proc.tokenizer)
    p = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, max_new_tokens=8, seed=7)
    a = text_request(proc, "Tell me a story", p)
    other = text_request(proc, "Something else entirely", replace(p, seed=1))
    alone = tokens(engine, a)[0]
    assert tokens(engine, a)[0] == alone
    assert tokens(engine, other, a)[1] == alone
    assert tokens(engine, text_request(proc, "Tell me a story", replace(p, seed=8)))[0] != alone


def test_n_samples_share_one_prefill(model, proc, monkeypatch):
    engine = Engine(model, proc.tokenizer)
    prefills = []
    forward = model.forward

    def counting(input_ids, *args, **kwargs):
        if input_ids.shape[1] > 1:
            prefills.append(input_ids.shape[0])
        return forward(input_ids, *args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    out = engine.generate([text_request(proc, "Name a colour", SamplingParams(temperature=1.0, n=4, seed=3, max_new_tokens=6))])[0]
    assert prefills == [1] and len(out.completions) == 4
    assert len({tuple(c.token_ids) for c in out.completions}) > 1


def test_min_new_tokens_bans_stop_ids(model, proc):
    engine = Engine(model, proc.tokenizer)
    base = text_request(proc, "Hello", GREEDY)
    first = tokens(engine, base)[0][0]
    stop_at_once = engine.generate([replace(base, params=replace(GREEDY, stop_token_ids=(first,)))])[0].completions[0]
    assert stop_at_once.token_ids == [] and stop_at_once.finish_reason == "stop" and stop_at_once.num_generated == 1
    held = engine.generate([replace(base, params=replace(GREEDY, stop_token_ids=(first,), min_new_tokens=3))])[0]
    c = held.completions[0]
    assert len(c.token_ids) >= 3 and first not in c.token_ids[:3]


def test_cancel_frees_the_rows(model, proc):
    engine = Engine(model, proc.tokenizer)
    params = replace(GREEDY, max_new_tokens=6)
    keep_req = text_request(proc, "keep me", params)
    alone = tokens(engine, keep_req)[0]
    doomed = engine.add_request(text_request(proc, "cancel me", replace(params, n=2)))
    keep = engine.add_request(keep_req)
    engine.step()
    events = engine.cancel(doomed)
    assert [(e.index, e.finish_reason) for e in events] == [(0, "cancelled"), (1, "cancelled")]
    assert engine.num_rows == 1
    got = []
    while engine.has_work:
        got += [e.completion.token_ids for e in engine.step() if e.request_id == keep and e.completion]
    assert got == [alone]
    assert engine.cancel(keep) == []


# ---- text: streaming, UTF-8, stop strings -----------------------------------------------------


class ScriptedModel(nn.Module):
    """Stands in for MiniCPMV: always predicts the next id of `script` (batch 1), with the KV cache
    bookkeeping of the real model, so the engine's text handling can be tested on chosen tokens."""

    def __init__(self, script: list[int], vocab_size: int):
        super().__init__()
        self.config = replace(PRESETS["tiny"], llm=replace(PRESETS["tiny"].llm, vocab_size=vocab_size))
        self.dummy = nn.Parameter(torch.zeros(1))
        self.script, self.calls = script, 0

    def forward(self, input_ids, attention_mask=None, cache=None, num_logits_to_keep=0, **_) -> MiniCPMVOutput:
        cache.advance(input_ids.shape[1])
        logits = torch.full((input_ids.shape[0], 1, self.config.llm.vocab_size), -10.0)
        logits[:, 0, self.script[min(self.calls, len(self.script) - 1)]] = 10.0
        self.calls += 1
        return MiniCPMVOutput(logits=logits)


def byte_token(tokenizer, b: bytes) -> int:
    return tokenizer.token_bytes.index(b)


def run_script(proc: Processor, script: list[int], params: SamplingParams) -> tuple[list[str], object]:
    tok = proc.tokenizer
    engine = Engine(ScriptedModel(script, tok.vocab_size), tok)
    rid = engine.add_request(Request(tok.encode("hi"), params))
    pieces, done = [], None
    while engine.has_work:
        for e in engine.step():
            assert e.request_id == rid
            pieces.append(e.text)
            done = e.completion or done
    return pieces, done


def test_streaming_never_splits_a_character_and_keeps_exclamation_marks(proc):
    tok = proc.tokenizer
    emoji = [byte_token(tok, bytes([b])) for b in "🙂".encode()]  # one character over four byte tokens
    script = tok.encode("Hi") + emoji + tok.encode("! é") + [tok.im_end_id]
    pieces, done = run_script(proc, script, SamplingParams(temperature=0, max_new_tokens=20))
    assert all("\ufffd" not in p for p in pieces)
    assert pieces[1:4] == ["", "", ""] and pieces[4] == "🙂"
    assert "".join(pieces) == done.text == tok.decode(done.token_ids) == "Hi🙂! é"
    assert done.finish_reason == "stop" and done.num_generated == len(script)


def test_stop_string_across_tokens_is_cut_and_never_streamed(proc):
    tok = proc.tokenizer
    script = tok.encode("Hello E") + tok.encode("N") + tok.encode("D and more") + [tok.im_end_id]
    pieces, done = run_script(proc, script, SamplingParams(temperature=0, max_new_tokens=30, stop=("END",)))
    assert "".join(pieces) == done.text == "Hello "
    assert done.finish_reason == "stop"
    pieces, done = run_script(proc, script, SamplingParams(temperature=0, max_new_tokens=30, stop=("ENDING",)))
    assert "".join(pieces) == done.text == "Hello END and more"  # a held-back prefix that never matched


def test_streamed_text_equals_the_final_text_on_the_model(model, proc, case_requests):
    engine = Engine(model, proc.tokenizer)
    for req in case_requests:
        engine.add_request(replace(req, params=replace(GREEDY, max_new_tokens=12)))
    streamed: dict[int, str] = {}
    finals: dict[int, str] = {}
    while engine.has_work:
        for e in engine.step():
            streamed[e.request_id] = streamed.get(e.request_id, "") + e.text
            if e.completion:
                finals[e.request_id] = e.completion.text
                assert e.completion.text == proc.tokenizer.decode(e.completion.token_ids)
    assert streamed == finals and len(finals) == len(case_requests)


def test_scan_stop_strings_examples():
    assert scan_stop_strings("abc E", ("END",)) == (None, 4)
    assert scan_stop_strings("abc EN", ("END",)) == (None, 4)
    assert scan_stop_strings("abc END!", ("END",)) == (4, 4)
    assert scan_stop_strings("x STOP END", ("END", "STOP")) == (2, 2)
    assert scan_stop_strings("plain", ("END",)) == (None, 5)


# ---- beam search ----------------------------------------------------------------------------------


class ToyTokenizer:
    """Five tokens 'a'..'d' and a stop token."""

    token_bytes = [b"a", b"b", b"c", b"d", b"."]
    special_ids: frozenset = frozenset()
    stop_ids = (4,)
    pad_id = 0


@pytest.fixture(scope="module")
def toy() -> MiniCPMV:
    """A tiny MiniCPMV whose vocabulary has 5 tokens, with logits spread enough to matter."""
    tiny = PRESETS["tiny"]
    m = MiniCPMV.from_config(replace(tiny, llm=replace(tiny.llm, vocab_size=5)), seed=3)
    with torch.no_grad():
        m.llm.lm_head.weight.mul_(40.0 / m.llm.lm_head.weight.norm(dim=1, keepdim=True))
    return m


def processed_logprobs(model, prompt: list[int], prefix: list[int], penalty: float) -> torch.Tensor:
    """HF beam scores of the next token after `prefix`, recomputed from scratch (no cache)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + prefix])).logits[0, -1]
    logp = torch.log_softmax(logits.float(), -1)
    for t in set(prefix):
        logp[t] = logp[t] * penalty if logp[t] < 0 else logp[t] / penalty
    return logp


def brute_force(model, prompt: list[int], max_new: int, penalty: float) -> list[tuple[float, list[int]]]:
    """Every hypothesis (ended by the stop token or by max_new), scored sum(log p) / length, best first."""
    done, frontier = [], [([], 0.0)]
    for step in range(max_new):
        grown = []
        for prefix, total in frontier:
            logp = processed_logprobs(model, prompt, prefix, penalty)
            for t in range(5):
                s = total + float(logp[t])
                if t == 4 or step == max_new - 1:
                    done.append((s / (step + 1), prefix + ([] if t == 4 else [t])))
                else:
                    grown.append((prefix + [t], s))
        frontier = grown
    return sorted(done, key=lambda d: -d[0])


@pytest.mark.parametrize("penalty", [1.0, 1.2])
def test_beam_search_with_enough_beams_is_exhaustive(toy, penalty):
    """With more beams than hypotheses, HF beam search must find the brute-force optimum (and order)."""
    prompt = [1, 2, 3, 0, 1]
    best = brute_force(toy, prompt, 3, penalty)
    assert len({round(s, 6) for s, _ in best[:4]}) == 4, "toy model should not produce ties"
    engine = Engine(toy, ToyTokenizer(), max_batch_size=128)
    params = SamplingParams(temperature=0, num_beams=100, n=3, max_new_tokens=3, repetition_penalty=penalty)
    out = engine.generate([Request(prompt, params)])[0]
    assert [c.token_ids for c in out.completions] == [ids for _, ids in best[:3]]


def reference_beam_search(model, prompt: list[int], k: int, max_new: int, penalty: float) -> list[int]:
    """HF's algorithm written plainly (lists, full recomputation): the engine's cache reordering must agree."""
    running, finished, improvable = [([], 0.0)] + [([], -1e9)] * (k - 1), [], True
    for step in range(max_new):
        cands = []
        for b, (prefix, total) in enumerate(running):
            logp = processed_logprobs(model, prompt, prefix, penalty)
            cands += [(total + float(logp[t]), b, t) for t in range(5)]
        cands = sorted(cands, key=lambda c: -c[0])[: 2 * k]
        ended = [t == 4 or step == max_new - 1 for _, _, t in cands]
        if improvable:
            for rank, ((s, b, t), e) in enumerate(zip(cands, ended)):
                if e and rank < k:
                    finished.append((s / (step + 1), running[b][0] + ([] if t == 4 else [t])))
            finished = sorted(finished, key=lambda f: -f[0])[:k]
        live = sorted([(s - 1e9 * e, b, t) for (s, b, t), e in zip(cands, ended)], key=lambda c: -c[0])[:k]
        running = [(running[b][0] + [t], s) for s, b, t in live]
        worst = min(f[0] for f in finished) if len(finished) == k else -1e9
        improvable = improvable and running[0][1] / (step + 1) > worst
        if not improvable or all(ended):
            break
    return finished[0][1]


def test_three_beams_match_a_plain_reimplementation(toy):
    engine = Engine(toy, ToyTokenizer())
    for prompt in ([1, 2, 3], [0, 0, 1, 3, 2, 2], [3]):
        params = SamplingParams(temperature=0, num_beams=3, max_new_tokens=6, repetition_penalty=1.2)
        got = engine.generate([Request(prompt, params)])[0].completions[0].token_ids
        assert got == reference_beam_search(toy, prompt, 3, 6, 1.2), prompt


def test_beam_request_batched_with_sampling_rows(toy):
    engine = Engine(toy, ToyTokenizer())
    beam = Request([1, 2, 3], SamplingParams(temperature=0, num_beams=3, max_new_tokens=6, repetition_penalty=1.2))
    greedy = Request([2, 2], SamplingParams(temperature=0, max_new_tokens=5))
    alone = tokens(engine, beam) + tokens(engine, greedy)
    assert tokens(engine, beam, greedy) == alone


# ---- vision cache ---------------------------------------------------------------------------------


def count_encodes(monkeypatch, model) -> list[int]:
    """Record the number of slices of every encode_vision call."""
    calls: list[int] = []
    encode = model.encode_vision

    def counting(slices, tgt_sizes, temporal_ids=None):
        calls.append(len(slices))
        return encode(slices, tgt_sizes, temporal_ids)

    monkeypatch.setattr(model, "encode_vision", counting)
    return calls


def test_vision_cache_skips_encoding_seen_images(model, proc, monkeypatch):
    calls = count_encodes(monkeypatch, model)
    photo, other = png("images/img_640x480.png"), png("images/case_c_300x900.png")
    cached = Engine(model, proc.tokenizer, vision_cache=VisionCache())
    uncached = Engine(model, proc.tokenizer)

    def turn(engine, msgs):
        s = proc.encode(msgs)
        req = Request(s.input_ids, GREEDY, VisionInputs(s.image_bounds, s.pixel_values, s.tgt_sizes, s.temporal_ids))
        return tokens(engine, req)[0], len(s.pixel_values)

    t1 = [{"role": "user", "content": [photo, "What is this?"]}]
    first, n_photo = turn(cached, t1)
    assert calls == [n_photo]
    t2 = t1 + [{"role": "assistant", "content": "A picture."}, {"role": "user", "content": "Are you sure?"}]
    second, _ = turn(cached, t2)
    assert calls == [n_photo], "the second turn must not re-encode the photo"
    assert second == turn(uncached, t2)[0]
    assert calls == [n_photo, n_photo]
    t3 = t2 + [{"role": "assistant", "content": "Yes."}, {"role": "user", "content": [other, "And this?"]}]
    _, n_both = turn(cached, t3)
    assert calls[-1] == n_both - n_photo, "only the new image is encoded"
    assert cached.vision_cache.stats.hits >= 2 * n_photo


def test_vision_cache_lru_is_bounded_in_bytes():
    cache = VisionCache(max_bytes=3 * 64 * 4 * 4)  # three [64, 4] float32 entries
    for k in "abcd":
        cache.put(k, torch.zeros(64, 4))
    assert cache.get("a") is None and cache.get("b") is not None
    cache.put("e", torch.zeros(64, 4))  # 'b' was just used: 'c' goes
    assert cache.get("c") is None and len(cache) == 3 and cache.nbytes == 3 * 64 * 4 * 4
    cache.put("huge", torch.zeros(1000, 4))
    assert cache.get("huge") is None and cache.stats.evictions == 2


def test_group_keys_and_ranges():
    s = [torch.zeros(3, 14, 28), torch.ones(3, 14, 28)]
    tgt = torch.tensor([[1, 2], [1, 2]])
    assert group_key(s[:1], tgt[:1], [-1]) == group_key([torch.zeros(3, 14, 28)], tgt[:1], [-1])
    assert group_key(s[:1], tgt[:1], [-1]) != group_key(s[1:], tgt[:1], [-1])
    assert group_key(s, tgt, [0, 3]) != group_key(s, tgt, [0, 4])
    assert split_groups(5, [[0, 3, 7], [10, 13]]) == [(0, 3), (3, 5)]
    assert split_groups(2, None) == [(0, 1), (1, 2)]


# ---- validation and the background loop ---------------------------------------------------------


@pytest.mark.parametrize("change, match", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(min_new_tokens=9), "min_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(num_beams=2, n=3), "num_beams"),
    (dict(num_beams=2, stop=("x",)), "beam search"),
    (dict(stop=("",)), "stop strings"),
    (dict(max_new_tokens=10**6), "positions"),
])
def test_bad_requests_raise_input_error(change, match):
    with pytest.raises(InputError, match=match):
        check_request(Request([1, 2], replace(GREEDY, **change)), 100, 40960)


def test_bad_prompts_raise_input_error():
    with pytest.raises(InputError, match="empty"):
        check_request(Request([], GREEDY), 100, 4096)
    with pytest.raises(InputError, match="vocabulary"):
        check_request(Request([5, 100], GREEDY), 100, 4096)
    spans = VisionInputs(torch.tensor([[1, 3]]), [torch.zeros(3, 14, 14)] * 2, torch.tensor([[1, 1], [1, 1]]))
    with pytest.raises(InputError, match="1 visual spans .* 2 vision groups"):
        check_request(Request([1, 2, 3, 4], GREEDY, spans), 100, 4096)


def test_engine_loop_serves_threads_and_cancels(model, proc):
    engine = Engine(model, proc.tokenizer)
    reqs = [text_request(proc, f"question number {i}", replace(GREEDY, max_new_tokens=6)) for i in range(3)]
    alone = [tokens(engine, r)[0] for r in reqs]
    loop = EngineLoop(engine)
    results: dict[int, list[int]] = {}
    done = threading.Event()

    def submit(i):
        def on_event(e):
            if e.completion is not None:
                results[i] = e.completion.token_ids
                if len(results) == 3:
                    done.set()
        loop.submit(reqs[i], on_event)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    assert done.wait(60)
    assert [results[i] for i in range(3)] == alone
    cancelled = threading.Event()
    rid = loop.submit(text_request(proc, "long", replace(GREEDY, max_new_tokens=500)),
                      lambda e: e.finish_reason == "cancelled" and cancelled.set())
    loop.cancel(rid)
    assert cancelled.wait(60)
    loop.close()
    with pytest.raises(RuntimeError, match="shut down"):
        loop.submit(reqs[0], lambda e: None)


def test_engine_loop_reports_errors_and_keeps_serving(proc):
    class Failing(ScriptedModel):
        def forward(self, input_ids, attention_mask=None, cache=None, num_logits_to_keep=0, **kw):
            if input_ids.shape[1] > 1 and 13 in input_ids[0].tolist():
                raise RuntimeError("boom")
            return super().forward(input_ids, attention_mask, cache, num_logits_to_keep, **kw)

    tok = proc.tokenizer
    loop = EngineLoop(Engine(Failing([5, 6, tok.im_end_id], tok.vocab_size), tok))
    got: dict[str, object] = {}
    failed, served = threading.Event(), threading.Event()
    loop.submit(Request([1, 13], GREEDY), lambda e: (got.setdefault("bad", e), failed.set()))
    assert failed.wait(30) and isinstance(got["bad"], RuntimeError)
    loop.submit(Request([1, 2], GREEDY), lambda e: e.completion and (got.setdefault("good", e), served.set()))
    assert served.wait(30) and got["good"].completion.finish_reason == "stop"
    loop.close()
