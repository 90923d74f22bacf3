"""The OpenAI-compatible server (minicpmv/serve/openai_server.py) against a FAKE ChatService, driven by the official
`openai` client and by raw httpx for malformed requests. All traffic stays on 127.0.0.1.

Integration tests with the real ChatService on the tiny reference model are at the end of the file."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import replace

import httpx
import pytest
import uvicorn
from openai import AsyncOpenAI, DefaultAsyncHttpxClient, OpenAI
from PIL import Image

from minicpmv.errors import InputError
from minicpmv.inference.types import ChatResult, MediaOptions, SamplingParams, StreamEvent, Usage
from minicpmv.serve import MediaPolicy, ServerConfig
from minicpmv.serve.openai_server import create_app
from conftest import reference_path
from test_media_fetch import data_url, huge_png_bytes, png_bytes, video_bytes


class FakeChatService:
    """Deterministic stand-in for ChatService: echoes the last user text word by word.

    Thinking mode first streams the reasoning words 'looking at N images'. Records every call and the number of
    streams that were closed before finishing (a disconnected client must close its stream).
    """

    model_name = "fake-minicpmv"

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls: list[dict] = []
        self.active = self.max_active = self.cancelled = 0

    def count_tokens(self, messages: list[dict], media: MediaOptions) -> Usage:
        parts = [p for m in messages for p in (m["content"] if isinstance(m["content"], list) else [])]
        visual = 64 * sum(_kind(p) != "text" for p in parts)
        text = sum(len(_text(m).split()) for m in messages)
        return Usage(prompt_tokens=text + visual, visual_tokens=visual)

    def _words(self, messages: list[dict], enable_thinking: bool) -> tuple[list[str], list[str]]:
        last = _text(next(m for m in reversed(messages) if m["role"] == "user"))
        if "RAISE_INPUT_ERROR" in last:
            raise InputError("messages[0]: the fake service refuses this text")
        images = sum(_kind(p) == "image" for m in messages if isinstance(m["content"], list) for p in m["content"])
        reasoning = ["looking", "at", f"{images}", "images"] if enable_thinking else []
        return reasoning, ["echo:", *last.split()]

    async def stream(self, messages, params: SamplingParams, *, enable_thinking=False, media=MediaOptions(),
                     system_prompt=""):
        self.calls.append(dict(messages=messages, params=params, enable_thinking=enable_thinking, media=media))
        reasoning, answer = self._words(messages, enable_thinking)
        prompt = self.count_tokens(messages, media)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        finished = False
        try:
            for index in range(params.n):
                tokens = [("reasoning", w + " ") for w in reasoning] + [("answer", w + " ") for w in answer]
                for k, (kind, text) in enumerate(tokens[:params.max_new_tokens]):
                    await asyncio.sleep(self.delay)
                    if "MIDSTREAM_ERROR" in text:
                        raise RuntimeError("the fake service failed mid-stream")
                    yield StreamEvent(index, kind, text.strip() if k == len(tokens) - 1 else text)
                reason = "length" if len(tokens) > params.max_new_tokens else "stop"
                usage = replace(prompt, completion_tokens=min(len(tokens), params.max_new_tokens))
                yield StreamEvent(index, "answer", "", finished=True, finish_reason=reason, usage=usage)
            finished = True
        finally:
            self.active -= 1
            self.cancelled += not finished

    async def complete(self, messages, params, *, enable_thinking=False, media=MediaOptions(), system_prompt=""):
        texts = [{"reasoning": "", "answer": "", "usage": None, "reason": None} for _ in range(params.n)]
        async for ev in self.stream(messages, params, enable_thinking=enable_thinking, media=media):
            texts[ev.index][ev.kind] += ev.text
            if ev.finished:
                texts[ev.index].update(usage=ev.usage, reason=ev.finish_reason)
        return [ChatResult(text=t["reasoning"] + t["answer"], reasoning=t["reasoning"].strip(), answer=t["answer"],
                           finish_reason=t["reason"], usage=t["usage"]) for t in texts]


def _kind(part) -> str:
    """A typed dict part's type; other parts (e.g. a decoded Video object from the CLI) are 'other'."""
    return part["type"] if isinstance(part, dict) else "other"


def _text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else " ".join(p["text"] for p in content if _kind(p) == "text")


class ServerThread:
    """uvicorn serving `app` on a pre-bound 127.0.0.1 socket in a daemon thread."""

    def __init__(self, app, shutdown_timeout_s: float = 5.0):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=shutdown_timeout_s)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start in 10 s"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    (root / "allowed").mkdir()
    (root / "allowed" / "cat.png").write_bytes(png_bytes((40, 30)))
    (root / "secret.png").write_bytes(png_bytes())
    return root


@pytest.fixture(scope="module")
def server(media_dir):
    service = FakeChatService()
    config = ServerConfig(max_prompt_tokens=500, max_body_bytes=2 * 2**20,
                          media=MediaPolicy(allowed_media_dir=media_dir / "allowed", max_image_pixels=36_000_000))
    with ServerThread(create_app(service, config)) as srv:
        srv.service = service
        yield srv


@pytest.fixture
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def test_non_streaming_text_and_usage(client, server):
    out = client.chat.completions.create(model="fake-minicpmv", messages=[{"role": "user", "content": "hello there"}],
                                         max_tokens=50)
    assert out.choices[0].message.content == "echo: hello there"
    assert out.choices[0].message.reasoning_content is None
    assert out.choices[0].finish_reason == "stop"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (2, 3, 5)
    assert out.usage.prompt_tokens_details.visual_tokens == 0
    assert server.service.calls[-1]["enable_thinking"] is False


def test_image_as_data_url_and_thinking_on(client, server):
    out = client.chat.completions.create(
        model="x", messages=user(image(data_url(png_bytes((40, 30)), "image/png")), text("what is it")),
        extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    msg = out.choices[0].message
    assert (msg.reasoning_content, msg.content) == ("looking at 1 images", "echo: what is it")
    assert out.usage.prompt_tokens_details.visual_tokens == 64
    part = server.service.calls[-1]["messages"][0]["content"][0]
    assert part["type"] == "image" and isinstance(part["image"], Image.Image) and part["image"].size == (40, 30)
    assert server.service.calls[-1]["params"].top_k == 50, "thinking mode keeps the official defaults"


def test_streaming_thinking_deltas_and_usage_chunk(client):
    stream = client.chat.completions.create(
        model="x", messages=user(image(data_url(png_bytes(), "image/png")), text("count them")), stream=True,
        stream_options={"include_usage": True}, extra_body={"enable_thinking": True})
    reasoning, content, finish, usage = "", "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert (reasoning.strip(), content, finish) == ("looking at 1 images", "echo: count them", "stop")
    assert usage.prompt_tokens == 66 and usage.prompt_tokens_details.visual_tokens == 64
    assert usage.completion_tokens == 7 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_thinking_off_streams_no_reasoning(client):
    chunks = list(client.chat.completions.create(model="x", messages=[{"role": "user", "content": "a b"}],
                                                 stream=True, extra_body={"enable_thinking": False}))
    assert not any(getattr(c.delta, "reasoning_content", None) for ch in chunks for c in ch.choices)
    assert "".join(c.delta.content or "" for ch in chunks for c in ch.choices) == "echo: a b"


def test_video_data_url_reaches_the_service_and_is_cleaned_up(client, server):
    out = client.chat.completions.create(
        model="x", messages=user({"type": "video_url", "video_url": {"url": data_url(video_bytes(), "video/mp4")}},
                                 text("what happens")),
        extra_body={"fps": 2.0, "packing": 3, "max_slice_nums": 1})
    assert out.choices[0].message.content == "echo: what happens"
    call = server.service.calls[-1]
    part = call["messages"][0]["content"][0]
    assert part["type"] == "video"
    assert call["media"] == MediaOptions(max_slice_nums=1, fps=2.0, packing=3)
    assert not __import__("os").path.exists(part["path"]), "the temporary video must be deleted after the request"


def test_sampling_fields_reach_the_service(client, server):
    out = client.chat.completions.create(model="x", messages=[{"role": "system", "content": "be brief"},
                                                              {"role": "user", "content": "one two three four"}],
                                         n=3, max_completion_tokens=2, temperature=0.0, top_p=0.5, stop=["END"],
                                         seed=7)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert {c.message.content for c in out.choices} == {"echo: one "} and out.choices[0].finish_reason == "length"
    params = server.service.calls[-1]["params"]
    assert (params.n, params.max_new_tokens, params.temperature, params.top_p, params.stop, params.seed) == \
        (3, 2, 0.0, 0.5, ("END",), 7)
    assert params.top_k == 100 and params.repetition_penalty == 1.03, "unset fields keep the non-thinking defaults"
    assert server.service.calls[-1]["messages"][0] == {"role": "system", "content": "be brief"}


def test_history_keeps_reasoning_content_and_maps_developer_to_system(client, server):
    client.chat.completions.create(model="x", messages=[
        {"role": "developer", "content": "be brief"}, {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1", "reasoning_content": "r1"}, {"role": "user", "content": "q2"}])
    sent = server.service.calls[-1]["messages"]
    assert sent[0] == {"role": "system", "content": "be brief"}
    assert sent[2] == {"role": "assistant", "content": "a1", "reasoning_content": "r1"}


def test_local_path_inside_allowed_dir(client, server, media_dir):
    out = client.chat.completions.create(model="x", messages=user(image(str(media_dir / "allowed" / "cat.png")),
                                                                  text("hi")))
    assert out.choices[0].message.content == "echo: hi"
    assert server.service.calls[-1]["messages"][0]["content"][0]["image"].size == (40, 30)


def test_models_health_and_page(server):
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["id"] == "fake-minicpmv"
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "<html" in page.text.lower()


def good_body(**extra) -> dict:
    return {"model": "x", "messages": [{"role": "user", "content": "still alive"}], "max_tokens": 10, **extra}


def bad_requests(media_dir) -> dict[str, tuple[int, dict | bytes, str]]:
    """name -> (expected status, body, expected substring of the error message)."""
    msg = lambda *parts: good_body(messages=user(*parts))  # noqa: E731
    return {
        "bad json": (400, b'{"model": "x", "messages": [', "not valid JSON"),
        "not an object": (400, b'[1, 2]', "must be a JSON object"),
        "messages is a string": (400, good_body(messages="hello"), "messages"),
        "temperature is a string": (400, good_body(temperature="hot"), "temperature"),
        "n is a float": (400, good_body(n=1.5), "n: Input should be a valid integer"),
        "max_tokens negative": (400, good_body(max_tokens=-3), "max_tokens"),
        "unknown role": (400, good_body(messages=[{"role": "wizard", "content": "hi"}]), "messages.0.role"),
        "tool role": (400, good_body(messages=[{"role": "tool", "content": "hi"}]), "messages.0.role"),
        "unknown part type": (400, msg({"type": "input_audio", "input_audio": {}}), "messages.0.content"),
        "no messages": (400, good_body(messages=[]), "messages"),
        "bad base64": (400, msg(image("data:image/png;base64,!!!notbase64!!!")), "invalid base64"),
        "not an image": (400, msg(image(data_url(b"plain text", "image/png"))), "could not decode"),
        "50 megapixel png": (400, msg(image(data_url(huge_png_bytes(), "image/png"))), "over the limit of 36000000"),
        "url to loopback": (400, msg(image("http://127.0.0.1:9/x.png")), "fetching http(s) media is disabled"),
        "url to metadata service": (400, msg(image("http://169.254.169.254/latest/meta-data/")), "disabled"),
        "path outside allowed dir": (400, msg(image(str(media_dir / "secret.png"))), "outside the allowed media"),
        "dotdot escape": (400, msg(image(f"{media_dir}/allowed/../secret.png")), "outside the allowed media"),
        "n too large": (400, good_body(n=1000), "n=1000 exceeds"),
        "max_tokens too large": (400, good_body(max_tokens=10**6), "max_tokens=1000000 exceeds"),
        "prompt too long": (400, good_body(messages=[{"role": "user", "content": "w " * 600}]),
                            "over the limit of 500"),
        "thinking flags disagree": (400, good_body(enable_thinking=True,
                                                   chat_template_kwargs={"enable_thinking": False}), "disagree"),
        "tools": (400, good_body(tools=[{"type": "function"}]), "tool calling"),
        "service input error": (400, good_body(messages=[{"role": "user", "content": "RAISE_INPUT_ERROR"}]),
                                "fake service refuses"),
        "body too large": (413, good_body(pad="x" * (3 * 2**20)), "exceeds the limit"),
    }


def test_malformed_requests_get_openai_errors_and_the_server_keeps_serving(server, media_dir):
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for name, (status, body, needle) in bad_requests(media_dir).items():
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
            assert r.status_code == status, (name, r.text)
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, name
            assert needle in error["message"] or needle == error["param"], (name, error)
            ok = http.post("/v1/chat/completions", json=good_body())
            assert ok.json()["choices"][0]["message"]["content"] == "echo: still alive", name
        assert http.get("/nope").json()["error"]["type"] == "invalid_request_error"
        assert http.get("/health").json()["in_flight"] == 0


def test_private_urls_are_refused_before_connecting(server, media_dir):
    """With remote media ON, loopback / link-local / private targets are refused without any connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    config = ServerConfig(media=MediaPolicy(allow_remote_media=True, fetch_timeout_s=1.0))
    urls = [f"http://127.0.0.1:{port}/a.png", f"http://localhost:{port}/a.png", "http://169.254.169.254/latest",
            "http://10.0.0.1/a.png", "http://192.168.1.1/a.png", "http://[::1]/a.png", "http://0.0.0.0/a.png"]
    with ServerThread(create_app(FakeChatService(), config)) as srv, httpx.Client(base_url=srv.url) as http:
        for url in urls:
            r = http.post("/v1/chat/completions", json=good_body(messages=user(image(url), text("x"))))
            assert r.status_code == 400 and "non-public address" in r.json()["error"]["message"], (url, r.text)
        with pytest.raises(BlockingIOError):
            listener.accept()
    listener.close()


def test_api_key(media_dir):
    with ServerThread(create_app(FakeChatService(), ServerConfig(api_key="s3cret"))) as srv:
        assert httpx.post(srv.url + "/v1/chat/completions", json=good_body()).status_code == 401
        assert httpx.get(srv.url + "/v1/models", headers={"authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(srv.url + "/health").status_code == 200
        client = OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
        assert client.chat.completions.create(model="x", messages=good_body()["messages"]).choices


def test_32_concurrent_streaming_clients():
    service = FakeChatService(delay=0.002)

    async def one(client: AsyncOpenAI, i: int) -> str:
        stream = await client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": f"client {i} says {' '.join(['w'] * (i % 5))}"}],
            stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def main(url: str) -> list[str]:
        client = AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0,
                             http_client=DefaultAsyncHttpxClient(limits=httpx.Limits(max_connections=64)))
        return await asyncio.gather(*(one(client, i) for i in range(32)))

    with ServerThread(create_app(service, ServerConfig())) as srv:
        answers = asyncio.run(main(srv.url))
    assert answers == [" ".join(["echo:", "client", str(i), "says", *["w"] * (i % 5)]) for i in range(32)]
    assert service.max_active > 8, f"requests should run concurrently, max active {service.max_active}"
    assert service.cancelled == 0


def _wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_disconnecting_clients_free_their_slot():
    service = FakeChatService(delay=0.05)
    long_text = " ".join(["word"] * 200)
    with ServerThread(create_app(service, ServerConfig())) as srv, httpx.Client(base_url=srv.url) as http:
        with http.stream("POST", "/v1/chat/completions",
                         json=good_body(messages=[{"role": "user", "content": long_text}], stream=True,
                                        max_tokens=500)) as r:
            next(r.iter_lines())
        assert _wait_for(lambda: service.cancelled == 1 and service.active == 0), "the stream was not cancelled"
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json=good_body(messages=[{"role": "user", "content": long_text}],
                                                             max_tokens=500), timeout=0.3)
        assert _wait_for(lambda: service.cancelled == 2 and service.active == 0), "the completion was not cancelled"
        assert _wait_for(lambda: http.get("/health").json()["in_flight"] == 0)


def test_busy_server_answers_429_and_midstream_errors_are_in_band():
    service = FakeChatService(delay=0.05)
    app = create_app(service, ServerConfig(max_in_flight=1))
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url) as http:
        with http.stream("POST", "/v1/chat/completions", json=good_body(stream=True, max_tokens=50,
                                                                      messages=[{"role": "user", "content": "a b c"}])):
            busy = http.post("/v1/chat/completions", json=good_body())
            assert busy.status_code == 429 and busy.json()["error"]["type"] == "rate_limit_exceeded"
        assert _wait_for(lambda: http.get("/health").json()["in_flight"] == 0)
        lines = http.post("/v1/chat/completions", json=good_body(
            stream=True, messages=[{"role": "user", "content": "fine then MIDSTREAM_ERROR"}])).text.split("\n\n")
        assert json.loads(lines[-2].removeprefix("data: "))["error"]["type"] == "server_error"


def test_graceful_shutdown_finishes_in_flight_streams():
    service = FakeChatService(delay=0.02)
    srv = ServerThread(create_app(service, ServerConfig()), shutdown_timeout_s=10).__enter__()
    lines: list[str] = []

    def consume():
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=good_body(
                stream=True, max_tokens=100, messages=[{"role": "user", "content": " ".join(["w"] * 30)}])) as r:
            lines.extend(line for line in r.iter_lines() if line)

    reader = threading.Thread(target=consume)
    reader.start()
    assert _wait_for(lambda: service.active == 1)
    srv.__exit__(None, None, None)
    reader.join(10)
    assert not srv.thread.is_alive(), "the server should stop once the stream is done"
    assert lines[-1] == "data: [DONE]" and service.cancelled == 0


# ---- integration: the real ChatService on the tiny reference model ----

@pytest.fixture(scope="module")
def real_server():
    import torch

    from minicpmv.api import load
    from minicpmv.chat import ChatService

    model, processor = load(reference_path("tiny_model"), device="cpu", dtype=torch.float32)
    service = ChatService(model, processor)
    with ServerThread(create_app(service, ServerConfig(max_prompt_tokens=2000))) as srv:
        srv.query_num = model.config.query_num  # visual tokens per image slice or video group
        yield srv
    service.close(cancel_running=True, timeout=10)


def test_real_model_streaming_equals_non_streaming(real_server):
    client = OpenAI(base_url=real_server.url + "/v1", api_key="x", max_retries=0)
    messages = user(image(data_url(png_bytes((200, 150)), "image/png")), text("Describe the image."))
    for thinking in (False, True):
        kwargs = dict(model="x", messages=messages, max_tokens=4, temperature=0,
                      extra_body={"chat_template_kwargs": {"enable_thinking": thinking}})
        whole = client.chat.completions.create(**kwargs)
        reasoning, content, usage = "", "", None
        for chunk in client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}):
            usage = chunk.usage or usage
            for c in chunk.choices:
                reasoning += getattr(c.delta, "reasoning_content", None) or ""
                content += c.delta.content or ""
        msg = whole.choices[0].message
        assert (reasoning, content) == (msg.reasoning_content or "", msg.content), thinking
        assert usage.model_dump() == whole.usage.model_dump(), thinking
        assert whole.usage.completion_tokens == 4 and whole.choices[0].finish_reason == "length"
        assert whole.usage.prompt_tokens_details.visual_tokens == real_server.query_num, "one unsliced image"
        assert thinking or msg.reasoning_content is None


def test_real_model_video_and_errors(real_server):
    client = OpenAI(base_url=real_server.url + "/v1", api_key="x", max_retries=0)
    out = client.chat.completions.create(
        model="x", max_tokens=3, temperature=0, extra_body={"fps": 2, "packing": 2},
        messages=user({"type": "video_url", "video_url": {"url": data_url(video_bytes(), "video/mp4")}},
                      text("What happens?")))
    assert out.usage.prompt_tokens_details.visual_tokens == 2 * real_server.query_num, \
        "8 frames at 4 fps, sampled at 2 fps and packed by 2: two groups"
    with httpx.Client(base_url=real_server.url) as http:
        r = http.post("/v1/chat/completions", json=good_body(messages=[{"role": "user", "content": "a <image> tag"}]))
        assert r.status_code == 400 and "<image>" in r.json()["error"]["message"]
        r = http.post("/v1/chat/completions", json=good_body(messages=user(image("data:image/png;base64,@@"))))
        assert r.status_code == 400
        assert http.post("/v1/chat/completions", json=good_body(max_tokens=2)).json()["usage"]["completion_tokens"] == 2


def test_real_model_32_concurrent_streams_match_sequential_results(real_server):
    prompts = [f"Say something about the number {i}." for i in range(32)]

    async def one(client: AsyncOpenAI, prompt: str, stream: bool) -> str:
        kwargs = dict(model="x", messages=[{"role": "user", "content": prompt}], max_tokens=3, temperature=0)
        if not stream:
            return (await client.chat.completions.create(**kwargs)).choices[0].message.content
        chunks = await client.chat.completions.create(**kwargs, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])

    async def main() -> tuple[list[str], list[str]]:
        client = AsyncOpenAI(base_url=real_server.url + "/v1", api_key="x", max_retries=0, timeout=120,
                             http_client=DefaultAsyncHttpxClient(limits=httpx.Limits(max_connections=64)))
        alone = [await one(client, p, stream=False) for p in prompts[:2]]
        together = await asyncio.gather(*(one(client, p, stream=True) for p in prompts))
        return alone, together

    alone, together = asyncio.run(main())
    assert all(together) and len(set(together)) > 1
    assert together[:2] == alone, "greedy answers must not depend on what else is in the batch"
