"""The official-compatible chat(), chat_detailed(), thinking split, ChatService and minicpmv.load."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minicpmv
from minicpmv.api import best_device, best_dtype, cpu_has_native_bf16
from minicpmv.chat import (
    ChatService, ThinkingSplitter, chat, chat_detailed, official_params, split_thinking, with_thinking,
)
from minicpmv.errors import InputError
from minicpmv.inference.types import MediaOptions, SamplingParams
from minicpmv.model.minicpmv import MiniCPMV
from minicpmv.processor.processor import Processor
from conftest import reference_path
from test_engine import count_encodes, png

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=6)


@pytest.fixture(scope="module")
def model() -> MiniCPMV:
    return MiniCPMV.from_pretrained(reference_path("tiny_model"))


@pytest.fixture(scope="module")
def proc() -> Processor:
    return Processor.from_pretrained(reference_path("tiny_model"))


@pytest.fixture(scope="module")
def photo():
    return png("images/img_640x480.png")


def user(*content) -> list[dict]:
    return [{"role": "user", "content": list(content) if len(content) > 1 else content[0]}]


# ---- thinking split -----------------------------------------------------------------------------


def test_split_thinking_examples():
    assert split_thinking("Two shapes.\n</think>\n\nThere are 2.", True) == ("Two shapes.", "There are 2.")
    assert split_thinking("still thinking", True) == ("still thinking", "")
    assert split_thinking(" plain answer </think> x ", False) == ("", "plain answer </think> x")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["a", "b c", " ", "\n", "</think>", "</th", "ink>", "<", "é", "\n\n"]), max_size=12),
       st.lists(st.integers(1, 6), min_size=1, max_size=30), st.booleans())
def test_streaming_split_equals_the_final_split(pieces, cuts, thinking):
    text = "".join(pieces)
    splitter = ThinkingSplitter(thinking)
    out, at, k = [], 0, 0
    while at < len(text):
        step = cuts[k % len(cuts)]
        out += splitter.feed(text[at:at + step])
        at, k = at + step, k + 1
    out += splitter.finish()
    reasoning, answer = split_thinking(text, thinking)
    assert "".join(t for kind, t in out if kind == "reasoning") == reasoning
    assert "".join(t for kind, t in out if kind == "answer") == answer
    assert all(t for _, t in out)
    kinds = [kind for kind, _ in out]
    assert kinds == sorted(kinds, key=lambda k: k == "answer"), "reasoning never follows the answer"


def test_thinking_prompt_derived_from_the_non_thinking_one(proc, photo):
    msgs = user(photo, "What is this?")
    derived = with_thinking(proc.encode(msgs, enable_thinking=False), proc.tokenizer)
    direct = proc.encode(msgs, enable_thinking=True)
    assert derived.input_ids == direct.input_ids
    assert torch.equal(derived.image_bounds, direct.image_bounds)


# ---- official chat() ---------------------------------------------------------------------------


def test_official_params_per_mode():
    p = official_params(False, True, 100, 0, {})
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.num_beams) == (0.7, 0.8, 100, 1.03, 1)
    p = official_params(True, True, 100, 5, {})
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.min_new_tokens) == (0.7, 1.0, 50, 1.0, 5)
    p = official_params(True, False, 100, 0, {})
    assert (p.num_beams, p.repetition_penalty, p.temperature) == (3, 1.2, 0.0)
    assert official_params(False, True, 100, 0, {"do_sample": False}).temperature == 0.0
    with pytest.warns(UserWarning, match="ignores \\['top_p'\\]"):
        assert official_params(True, True, 100, 0, {"top_p": 0.5}).top_p == 1.0
    with pytest.warns(UserWarning, match="ignores \\['temperature'\\]"):
        assert official_params(False, False, 100, 0, {"temperature": 0.1, "num_beams": 2}).num_beams == 2


def test_image_argument_is_prepended_and_msgs_may_come_first(model, proc, photo):
    msgs = user("What is this?")
    torch.manual_seed(0)
    a = chat(model, image=photo, msgs=msgs, processor=proc, max_new_tokens=6)
    torch.manual_seed(0)
    b = chat(model, msgs=user(photo, "What is this?"), processor=proc, max_new_tokens=6)
    torch.manual_seed(0)
    c = chat(model, json.dumps(msgs), processor=proc, max_new_tokens=6)  # msgs first, as a JSON string
    torch.manual_seed(0)
    d = chat(model, msgs=msgs, processor=proc, max_new_tokens=6)
    assert isinstance(a, str) and a == b and c == d
    assert msgs == user("What is this?"), "the caller's messages are not modified"


def test_batch_of_msgs_returns_a_list_equal_to_each_alone(model, proc, photo):
    convs = [user(photo, "Describe."), user("Hi there"), user("A third, longer question about the sea")]
    batch = chat(model, msgs=convs, processor=proc, sampling=False, max_new_tokens=5)
    assert isinstance(batch, list) and len(batch) == 3
    assert batch == [chat(model, msgs=c, processor=proc, sampling=False, max_new_tokens=5) for c in convs]


def test_thinking_mode_echoes_the_prefill_and_streams_the_same_text(model, proc):
    msgs = user("How many?")
    torch.manual_seed(1)
    whole = chat(model, msgs=msgs, processor=proc, enable_thinking=True, max_new_tokens=8)
    torch.manual_seed(1)
    pieces = list(chat(model, msgs=msgs, processor=proc, enable_thinking=True, max_new_tokens=8, stream=True))
    assert whole.startswith("<think>\n") and pieces[0] == "<think>\n"
    assert "<think>\n" + "".join(pieces[1:]).strip() == whole


def test_chat_detailed_and_usage(model, proc, photo):
    msgs = user(photo, "What is this?")
    r = chat_detailed(model, msgs=msgs, processor=proc, enable_thinking=True, do_sample=False, max_new_tokens=7)
    sample = proc.encode(msgs, enable_thinking=True)
    assert r.usage.prompt_tokens == len(sample.input_ids)
    assert r.usage.visual_tokens == 64 * len(sample.image_bounds) > 0
    assert r.usage.completion_tokens == len(r.token_ids) + (r.finish_reason == "stop") <= 7
    assert (r.reasoning, r.answer) == split_thinking(r.text, True)
    greedy = chat(model, msgs=msgs, processor=proc, enable_thinking=True, do_sample=False, max_new_tokens=7)
    assert greedy == "<think>\n" + r.text.strip()


def test_tokenizer_instead_of_processor_and_bad_arguments(model, proc, photo):
    kw = dict(msgs=user("Hi"), sampling=False, max_new_tokens=4)
    assert chat(model, tokenizer=proc.tokenizer, **kw) == chat(model, processor=proc, **kw)
    with pytest.raises(InputError, match="processor="):
        chat(model, tokenizer=object(), **kw)
    with pytest.raises(InputError, match="image=None"):
        chat(model, image=photo, msgs=[user("a"), user("b")], processor=proc)
    with pytest.raises(InputError, match="stream=True"):
        chat(model, msgs=user("a"), processor=proc, sampling=False, stream=True)
    with pytest.raises(InputError, match="max_length=3"):
        chat(model, msgs=user("a long enough prompt"), processor=proc, max_inp_length=3)


def test_repeated_chat_turns_reuse_the_encoded_image(model, proc, monkeypatch):
    calls = count_encodes(monkeypatch, model)
    other = png("images/case_f_500x350.png")  # not used by other chat() tests of this model
    msgs = user(other, "What is this?")
    first = chat(model, msgs=msgs, processor=proc, sampling=False, max_new_tokens=3)
    msgs += [{"role": "assistant", "content": first}, {"role": "user", "content": "Sure?"}]
    chat(model, msgs=msgs, processor=proc, sampling=False, max_new_tokens=3)
    assert len(calls) == 1


def test_model_chat_method_delegates(model, proc):
    if not hasattr(MiniCPMV, "chat"):
        pytest.skip("MiniCPMV.chat is not there yet: it should delegate to minicpmv.chat.chat (see the engine report)")
    kw = dict(msgs=user("Hi"), processor=proc, sampling=False, max_new_tokens=4)
    assert model.chat(**kw) == chat(model, **kw)


# ---- ChatService ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(model, proc):
    svc = ChatService(model, proc)
    yield svc
    svc.close(cancel_running=True)


def test_service_generate_stream_and_complete_agree(service, model, proc, photo):
    msgs = user(photo, "What is in the picture?")
    params = SamplingParams(temperature=0.0, max_new_tokens=8, n=2)
    results = service.generate(msgs, params, enable_thinking=True)
    assert len(results) == 2 and results[0].text == results[1].text
    expected = chat_detailed(model, msgs=msgs, processor=proc, enable_thinking=True, do_sample=False, max_new_tokens=8)
    assert results[0].token_ids == expected.token_ids

    async def run():
        events = [e async for e in service.stream(msgs, params, enable_thinking=True)]
        done = await service.complete(msgs, params, enable_thinking=True)
        return events, done

    events, done = asyncio.run(run())
    for i in range(2):
        mine = [e for e in events if e.index == i]
        assert "".join(e.text for e in mine if e.kind == "reasoning") == results[i].reasoning
        assert "".join(e.text for e in mine if e.kind == "answer") == results[i].answer
        assert mine[-1].finished and mine[-1].result.token_ids == results[i].token_ids
        assert mine[-1].usage == results[i].usage and results[i].usage.visual_tokens > 0
    assert [r.token_ids for r in done] == [r.token_ids for r in results]


def test_concurrent_requests_are_batched_and_equal_each_alone(service):
    prompts = ["Hi", "Tell me about the sea, please", "Why?", "Count to three"]
    alone = [service.generate(user(p), GREEDY)[0].token_ids for p in prompts]

    async def run():
        return await asyncio.gather(*[service.complete(user(p), GREEDY) for p in prompts])

    assert [r[0].token_ids for r in asyncio.run(run())] == alone


def test_closing_a_stream_early_cancels_the_request(service):
    async def run():
        agen = service.stream(user("Go on for a long time"), SamplingParams(temperature=0.0, max_new_tokens=2000))
        first = await anext(agen)
        await agen.aclose()
        return first

    assert not asyncio.run(run()).finished
    for _ in range(500):
        if service.loop.pending == 0 and service.engine.num_rows == 0:
            break
        time.sleep(0.01)
    assert service.loop.pending == 0 and service.engine.num_rows == 0


def test_count_tokens_is_reused_by_the_next_call(service, proc, monkeypatch, photo):
    calls = []
    encode = proc.encode
    monkeypatch.setattr(proc, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    msgs = user(photo, "What is this?")
    usage = service.count_tokens(msgs, MediaOptions())
    assert usage.prompt_tokens == len(encode(msgs).input_ids) and usage.visual_tokens > 0
    result = service.generate(msgs, GREEDY, enable_thinking=True)[0]
    assert len(calls) == 1
    assert result.usage.prompt_tokens == usage.prompt_tokens - 2  # '<think>\n' instead of the empty block


def test_service_input_errors_come_before_any_event(service):
    async def run():
        return [e async for e in service.stream([{"role": "robot", "content": "hi"}], GREEDY)]

    with pytest.raises(InputError, match="robot"):
        asyncio.run(run())
    with pytest.raises(InputError, match="top_p"):
        service.generate(user("hi"), SamplingParams(top_p=0.0))


# ---- minicpmv.load --------------------------------------------------------------------------------


def test_load_folder_and_preset():
    folder = reference_path("tiny_model")
    model, processor = minicpmv.load(folder, device="cpu")
    assert next(model.parameters()).dtype == best_dtype(torch.device("cpu"))
    assert processor.tokenizer.vocab_size == model.config.llm.vocab_size
    random_model, _ = minicpmv.load("tiny", device="cpu", dtype=torch.float32, tokenizer=folder)
    assert random_model.config == minicpmv.PRESETS["tiny"]


def test_load_explains_what_is_missing():
    with pytest.raises(InputError, match="tokenizer="):
        minicpmv.load("tiny", device="cpu")
    with pytest.raises(InputError, match="neither a folder nor a preset"):
        minicpmv.load("no-such-model")


def test_device_and_dtype_choice():
    assert cpu_has_native_bf16("AVX2", None) is False
    assert cpu_has_native_bf16("AVX512", {"avx512f"}) is False
    assert cpu_has_native_bf16("AVX512", {"avx512f", "amx_bf16"}) is True
    assert cpu_has_native_bf16("AVX512", None) is True
    assert best_dtype(torch.device("cpu")) in (torch.float32, torch.bfloat16)
    if not torch.cuda.is_available():
        assert best_device().type in ("cpu", "mps")
