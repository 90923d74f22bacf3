"""The official MiniCPM-V 4.5 chat template (Qwen3 ChatML with hybrid thinking) in plain Python.

Equal, character for character, to the Jinja template in the official `tokenizer_config.json`
for conversations of system / user / assistant messages (no tools). Rules (architecture spec §6.2):

* `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message; a first `system` message comes first.
* Assistant turns: reasoning is the text between `<think>` and `</think>` (or the message's
  `reasoning_content`); the answer is what follows `</think>`. Turns before the last user query
  keep only the answer. Turns after it keep a think block `<think>\\n{reasoning}\\n</think>\\n\\n`
  when they have reasoning or are the final message (then the block may be empty).
* Generation prompt: `<|im_start|>assistant\\n`, then `<think>\\n\\n</think>\\n\\n` for
  enable_thinking=False or `<think>\\n` for enable_thinking=True (None: nothing, as when the flag is
  not passed to the Jinja template).

`render_chat` also returns the character spans a fine-tune trains on (see `RenderedChat`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from minicpmv.errors import InputError

EMPTY_THINK = "<think>\n\n</think>\n\n"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class RenderedChat:
    """text:      the chat-templated string.
    trainable: (start, end) character spans of `text` that carry the loss in fine-tuning: each
               assistant turn from just after `<|im_start|>assistant\\n` through its `<|im_end|>`.
               The empty think block of the final assistant turn is excluded for non-thinking samples
               (training spec §6.3: the official fine-tune code skips these 4 tokens).
    """

    text: str
    trainable: tuple[tuple[int, int], ...]


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    enable_thinking: bool | None = False,
) -> RenderedChat:
    """Render `messages` ({'role', 'content': str, optional 'reasoning_content'}) like the template.

    Example (non-thinking, one earlier assistant turn whose reasoning is dropped):
        [{'role': 'user', 'content': 'Hi'},
         {'role': 'assistant', 'content': '<think>\\nhm\\n</think>\\n\\nHello.'},
         {'role': 'user', 'content': 'Bye'}]
        -> '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello.<|im_end|>\\n'
           '<|im_start|>user\\nBye<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n'
    """
    _check(messages)
    last_query = _last_query_index(messages)
    thinking_sample = _is_thinking_sample(messages)
    pieces: list[tuple[str, bool]] = []  # (text, trainable)
    for i, msg in enumerate(messages):
        role, content = msg["role"], msg["content"]
        if role != "assistant":  # system (first or later) and user render the same way
            pieces.append((f"<|im_start|>{role}\n{content}<|im_end|>\n", False))
            continue
        pieces.append(("<|im_start|>assistant\n", False))
        pieces.extend(_assistant_body(msg, i, len(messages), last_query, thinking_sample))
        pieces.append(("<|im_end|>", True))
        pieces.append(("\n", False))
    if add_generation_prompt:
        suffix = {None: "", False: EMPTY_THINK, True: "<think>\n"}[enable_thinking]
        pieces.append(("<|im_start|>assistant\n" + suffix, False))
    return _join(pieces)


def _assistant_body(
    msg: Mapping[str, Any], index: int, n_messages: int, last_query: int, thinking_sample: bool
) -> list[tuple[str, bool]]:
    """The text of one assistant turn between `assistant\\n` and `<|im_end|>`, as trainable pieces."""
    content: str = msg["content"]
    reasoning = msg.get("reasoning_content")
    if reasoning is None:
        reasoning = ""
        if "</think>" in content:
            reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
            content = content.split("</think>")[-1].lstrip("\n")
    is_last = index == n_messages - 1
    if index > last_query and (is_last or reasoning):
        block = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n"
        # the empty block of a non-thinking final answer is prompt, not target (training spec §6.3)
        train_block = not (is_last and block == EMPTY_THINK and not thinking_sample)
        return [(block, train_block), (content.lstrip("\n"), True)]
    return [(content, True)]


def _last_query_index(messages: Sequence[Mapping[str, Any]]) -> int:
    """Index of the last user message that is not a wrapped tool response (template `ns.last_query_index`)."""
    for i in range(len(messages) - 1, -1, -1):
        msg = messages[i]
        text = msg["content"]
        if msg["role"] == "user" and not (text.startswith("<tool_response>") and text.endswith("</tool_response>")):
            return i
    return len(messages) - 1


def _is_thinking_sample(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Official fine-tune rule: a sample is 'thinking' iff its last assistant message holds <think> and </think>."""
    for msg in reversed(messages):
        if msg["role"] == "assistant":
            return "<think>" in msg["content"] and "</think>" in msg["content"]
    return False


def _check(messages: Sequence[Mapping[str, Any]]) -> None:
    if not messages:
        raise InputError("the conversation is empty: pass at least one {'role': 'user', 'content': ...} message")
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role not in ROLES:
            raise InputError(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(msg.get("content"), str):
            raise InputError(f"message {i} content must be a string here, got {type(msg.get('content')).__name__}")


def _join(pieces: list[tuple[str, bool]]) -> RenderedChat:
    """Concatenate pieces; merge adjacent trainable pieces into (start, end) spans."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for text, trainable in pieces:
        if trainable and text:
            if spans and spans[-1][1] == pos:
                spans[-1] = (spans[-1][0], pos + len(text))
            else:
                spans.append((pos, pos + len(text)))
        pos += len(text)
    return RenderedChat(text="".join(t for t, _ in pieces), trainable=tuple(spans))
