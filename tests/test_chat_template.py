"""Chat template: reference prompts, the official Jinja template on random conversations, trained spans."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import reference_path
from minicpmv.errors import InputError
from minicpmv.processor.chat_template import EMPTY_THINK, render_chat

TAG = "(<image>./</image>)"


def as_chat(messages: list[dict], system_prompt: str) -> list[dict]:
    """chat()-style: image items become the tag, items joined with '\\n', system prompt first."""
    out = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for m in messages:
        items = [m["content"]] if isinstance(m["content"], str) else m["content"]
        out.append({"role": m["role"], "content": "\n".join(c if isinstance(c, str) else TAG for c in items)})
    return out


def reference_prompts() -> list[tuple[str, dict, dict]]:
    """(id, flags, item) for every chat_prompts item of processor.json and every tiny-model case."""
    out = []
    processor = json.loads(reference_path("processor.json").read_text())
    for p in processor["chat_prompts"]:
        for i, item in enumerate(p["items"]):
            out.append((f"{p['name']}[{i}]", p, item))
    for case in json.loads(reference_path("tiny_model_cases.json").read_text())["cases"]:
        out.append((case["name"], case["input"], {"messages": case["input"]["msgs"], **case}))
    return out


def test_reference_chat_template_texts():
    prompts = reference_prompts()
    assert prompts
    for name, flags, item in prompts:
        chat = as_chat(item["messages"], flags["system_prompt"])
        text = render_chat(chat, add_generation_prompt=True, enable_thinking=flags["enable_thinking"]).text
        assert text == item["chat_template_text"], name


@pytest.mark.parametrize(
    "enable_thinking, suffix", [(False, EMPTY_THINK), (True, "<think>\n"), (None, "")]
)
def test_generation_prompt(enable_thinking, suffix):
    text = render_chat([{"role": "user", "content": "Hi"}], enable_thinking=enable_thinking).text
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" + suffix
    no_prompt = render_chat([{"role": "user", "content": "Hi"}], add_generation_prompt=False, enable_thinking=enable_thinking)
    assert no_prompt.text == "<|im_start|>user\nHi<|im_end|>\n"


# ---- the official Jinja template (from tokenizer_config.json) on random conversations ---------------
ATOMS = ["a", " b", "\n", "\n\n", "<think>", "</think>", "<tool_response>", "</tool_response>", "x y", "你好"]
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system"]), "content": st.lists(st.sampled_from(ATOMS), max_size=6).map("".join)},
    optional={"reasoning_content": st.one_of(st.none(), st.sampled_from(["", "r", "\nr\n"]))},
)


@pytest.fixture(scope="module")
def official_template():
    jinja_sandbox = pytest.importorskip("jinja2.sandbox")
    config = json.loads(reference_path("tokenizer", "tokenizer_config.json").read_text())
    env = jinja_sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as transformers does
    return env.from_string(config["chat_template"])


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(message, min_size=1, max_size=6),
    add_generation_prompt=st.booleans(),
    enable_thinking=st.sampled_from([True, False, None]),
)
def test_equals_official_jinja_template(official_template, messages, add_generation_prompt, enable_thinking):
    flag = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    expected = official_template.render(messages=messages, add_generation_prompt=add_generation_prompt, **flag)
    got = render_chat(messages, add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking)
    assert got.text == expected


# ---- spans trained by fine-tuning ------------------------------------------------------------------
def trained(rendered) -> list[str]:
    return [rendered.text[a:b] for a, b in rendered.trainable]


def test_non_thinking_answer_skips_the_empty_think_block():
    r = render_chat([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], add_generation_prompt=False)
    assert r.text == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n" + EMPTY_THINK + "A<|im_end|>\n"
    assert trained(r) == ["A<|im_end|>"]


def test_thinking_answer_trains_the_reasoning():
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>\nR\n</think>\n\nA"}]
    r = render_chat(msgs, add_generation_prompt=False)
    assert trained(r) == ["<think>\nR\n</think>\n\nA<|im_end|>"]
    # official rule: both tags present = thinking sample, even when the reasoning is empty
    msgs[1]["content"] = "<think>\n\n</think>\n\nA"
    assert trained(render_chat(msgs, add_generation_prompt=False)) == [EMPTY_THINK + "A<|im_end|>"]


def test_earlier_turns_train_their_answer_without_reasoning():
    msgs = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\nold\n</think>\n\nA1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
    ]
    r = render_chat(msgs, add_generation_prompt=False)
    assert "old" not in r.text
    assert trained(r) == ["A1<|im_end|>", "A2<|im_end|>"]


def test_user_and_system_text_is_never_trained():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert render_chat(msgs).trainable == ()


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "empty"),
        ([{"role": "robot", "content": "x"}], "message 0 has role 'robot'"),
        ([{"role": "user", "content": ["x"]}], "message 0 content must be a string"),
    ],
)
def test_bad_messages(messages, match):
    with pytest.raises(InputError, match=match):
        render_chat(messages)
