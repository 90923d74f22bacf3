"""The `minicpmv` CLI (minicpmv/cli.py) with a FAKE ChatService; integration with the tiny reference model at the
end."""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minicpmv import cli
from minicpmv.inference.types import MediaOptions
from minicpmv.processor.video import Video
from conftest import reference_path
from test_media_fetch import png_bytes, video_bytes
from test_server import FakeChatService


class FakeWithModel(FakeChatService):
    """The fake service plus a small nn.Module as `model`, for `info`."""

    def __init__(self):
        super().__init__()
        self.model = torch.nn.ModuleDict({"vpm": torch.nn.Linear(4, 4), "llm": torch.nn.Linear(4, 2, bias=False)})


@pytest.fixture
def fake(monkeypatch):
    service = FakeWithModel()
    loaded: list[str | None] = []

    def load_service(model, tokenizer=None):
        loaded.append(model)
        return service

    monkeypatch.setattr(cli, "load_service", load_service)
    service.loaded = loaded
    return service


@pytest.fixture
def image(tmp_path) -> str:
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes((40, 30)))
    return str(path)


def test_one_shot_chat_prints_the_answer(fake, image, capsys):
    assert cli.main(["chat", "--image", image, "--model", "some/dir", "describe it"]) == 0
    assert capsys.readouterr().out == "echo: describe it\n"
    assert cli.main(["chat", "--image", image, "--model", "some/dir", "describe", "it"]) == 0, "unquoted words join"
    assert capsys.readouterr().out == "echo: describe it\n"
    call = fake.calls[-1]
    assert fake.loaded == ["some/dir", "some/dir"]
    assert call["messages"] == [{"role": "user", "content": [{"type": "image", "image": image},
                                                             {"type": "text", "text": "describe it"}]}]
    assert call["enable_thinking"] is False and call["params"].top_k == 100 and call["params"].max_new_tokens == 2048


def test_thinking_sampling_flags_and_reasoning_tags(fake, image, tmp_path, capsys):
    video = tmp_path / "v.mp4"
    video.write_bytes(video_bytes())
    argv = ["chat", "--image", image, "--video", str(video), "--think", "--show-reasoning", "--temperature", "0",
            "--seed", "3", "--max-new-tokens", "50", "--fps", "2", "--packing", "2", "why"]
    for stream in ("--stream", "--no-stream"):
        assert cli.main(argv + [stream]) == 0
        out = capsys.readouterr().out
        assert out.startswith("<think>\nlooking at 1 images") and out.endswith("\n</think>\necho: why\n"), out
    call = fake.calls[-1]
    assert call["enable_thinking"] is True
    assert (call["params"].temperature, call["params"].seed, call["params"].max_new_tokens) == (0.0, 3, 50)
    decoded = call["messages"][0]["content"][1]  # decoded by the CLI (for its progress bar): 2 s at 2 fps
    assert isinstance(decoded, Video) and len(decoded.frames) == 4 and len(decoded.temporal_ids) == 2
    assert call["media"] == MediaOptions(fps=2.0, packing=2)
    assert cli.main(["chat", "--think", "why"]) == 0
    assert capsys.readouterr().out == "echo: why\n", "off a terminal the reasoning is hidden unless asked for"


def test_missing_file_is_a_clear_error(fake, capsys):
    assert cli.main(["chat", "--image", "/no/such.png", "hi"]) == 2
    assert "no such file: '/no/such.png'" in capsys.readouterr().err


def test_repl_history_attachments_thinking_and_reset(fake, image, monkeypatch, capsys):
    lines = ["/image /no/such.png", f"/image {image}", "what is this", "/think on", "and now", "/bogus", "/reset",
             "fresh start", "/quit"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    assert cli.main(["chat"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["echo: what is this", "echo: and now", "echo: fresh start"]
    for note in ["error: no such file: '/no/such.png'", "attached image", "/think on|off", "conversation reset"]:
        assert note in captured.err
    first, second, third = fake.calls
    assert first["messages"][0]["content"][0] == {"type": "image", "image": image}
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][1] == {"role": "assistant", "content": "echo: what is this"}
    assert (first["enable_thinking"], second["enable_thinking"]) == (False, True)
    assert len(third["messages"]) == 1 and third["messages"][0]["content"] == [{"type": "text", "text": "fresh start"}]


def test_terminal_rendering_dims_the_reasoning():
    out = io.StringIO()
    printer = cli.Printer(tty=True, show_reasoning=True, out=out)
    for kind, text in [("reasoning", "hmm "), ("reasoning", "ok"), ("answer", "Yes.")]:
        printer.write(kind, text)
    printer.end()
    assert out.getvalue() == f"{cli.DIM}thinking: hmm ok{cli.RESET}\n\nYes.\n"


def test_info_reports_parameters_and_input_cost(fake, image, capsys):
    assert cli.main(["info", "--image", image, "--image", image]) == 0
    out = capsys.readouterr().out
    assert "fake-minicpmv" in out and "parameters" in out
    assert "vpm" in out and "20 parameters" in out and "28" in out  # 4*4+4 and total 20 + 8
    assert re.search(f"image {re.escape(image)} +64 visual tokens \\(64 prompt tokens alone\\)", out)
    assert re.search("all together +128 visual tokens, 128 prompt tokens", out)


def test_serve_arguments_become_a_server_config(tmp_path):
    args = cli.build_parser().parse_args([
        "serve", "--port", "9001", "--allowed-media-dir", str(tmp_path), "--allow-remote-media", "--api-key", "k",
        "--max-n", "2", "--max-image-pixels", "1000", "--max-body-mb", "1"])
    config = cli.server_config(args)
    assert (config.port, config.api_key, config.max_n, config.max_body_bytes) == (9001, "k", 2, 2**20)
    assert (config.media.allowed_media_dir, config.media.allow_remote_media, config.media.max_image_pixels) == \
        (tmp_path, True, 1000)
    with pytest.raises(cli.InputError, match="is not a folder"):
        cli.server_config(cli.build_parser().parse_args(["serve", "--allowed-media-dir", str(tmp_path / "nope")]))


def add_hello_command(sub) -> None:
    p = sub.add_parser("hello", help="a command added from another module")
    p.add_argument("--times", type=int, default=1)
    p.set_defaults(func=lambda args: 40 + args.times)


def test_subcommand_registry_is_extensible(monkeypatch, capsys):
    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, "test_cli:add_hello_command"])
    assert cli.main(["hello", "--times", "2"]) == 42
    assert cli.main([]) == 2 and "hello" in capsys.readouterr().out


def test_help_is_fast_and_imports_no_heavy_modules():
    code = ("import sys, minicpmv.cli as c; c.build_parser().format_help(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'fastapi', 'httpx', 'PIL'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"


def test_console_script_help():
    script = Path(sys.executable).parent / "minicpmv"
    if not script.exists():
        pytest.skip(f"{script} not installed (pip install -e .)")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert all(name in out for name in ("chat", "serve", "info"))


# ---- integration: the real loader and ChatService on the tiny reference model ----

@pytest.fixture(scope="module")
def real_loader():
    """cli.load_service, loading the tiny reference model once for this module."""
    path = str(reference_path("tiny_model"))
    service = cli.load_service(path)
    yield path, lambda model, tokenizer=None: service if model == path else cli.load_service(model, tokenizer)
    service.close(cancel_running=True, timeout=10)


def test_real_chat_and_info(real_loader, image, tmp_path, monkeypatch, capsys):
    path, loader = real_loader
    monkeypatch.setattr(cli, "load_service", loader)
    video = tmp_path / "v.mp4"
    video.write_bytes(video_bytes())
    assert cli.main(["chat", "--model", path, "--image", image, "--temperature", "0", "--max-new-tokens", "4",
                     "--no-stream", "Describe it."]) == 0
    once = capsys.readouterr().out
    assert cli.main(["chat", "--model", path, "--image", image, "--temperature", "0", "--max-new-tokens", "4",
                     "--stream", "Describe it."]) == 0
    assert capsys.readouterr().out == once and once.strip(), "greedy: streamed and whole answers agree"
    assert cli.main(["info", "--model", path, "--image", image, "--video", str(video), "--fps", "2"]) == 0
    out = capsys.readouterr().out
    rows = dict(line.split(None, 1) for line in out.splitlines() if line.startswith(("parameters", "dtype")))
    assert int(rows["parameters"].replace(",", "")) > 0 and rows["dtype"].strip() in ("float32", "bfloat16")
    assert re.search(r"video \S+ +\d+ visual tokens", out) and "all together" in out



@pytest.mark.parametrize("group", sorted(cli.GROUPS))
def test_every_command_group_builds_its_subcommands(group):
    """Each lazily imported group (train / data / eval) registers its modules without clashing."""
    parser = cli.build_parser(group)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    group_parser = sub.choices[group]
    inner = [a for a in group_parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert inner and len(inner[0].choices) >= 2, f"{group} has no subcommands"
