"""The `minicpmv` command line: `chat` (one-shot or interactive), `serve` (OpenAI-compatible server + web page) and
`info` (model size, and what an input would cost in tokens).

Subcommands come from SUBCOMMANDS: each entry names a function `add(subparsers)` that adds one parser and sets
`func` (called with the parsed args, returns an exit code). To add e.g. `minicpmv train`, write `add_train_command`
in your module (keep its imports light; import heavy modules inside `func`) and append
"minicpmv.train.cli:add_train_command" here.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from minicpmv.errors import InputError

SUBCOMMANDS: list[str] = [
    "minicpmv.cli:add_chat_command",
    "minicpmv.cli:add_serve_command",
    "minicpmv.cli:add_info_command",
]

# Command groups whose modules import torch while registering: each group's modules are imported only
# when that group is the command being run, so `minicpmv --help` and `minicpmv chat` stay fast.
GROUPS: dict[str, tuple[str, list[str]]] = {
    "train": ("pre-train, fine-tune (LoRA), RL (GRPO) and DPO; export and merge checkpoints",
              ["minicpmv.train.cli:register", "minicpmv.rl.cli:register"]),
    "data": ("build training data: corrupted document pages, RLAIF-V preference pairs",
             ["minicpmv.data.documents.cli:register", "minicpmv.rl.cli:register"]),
    "eval": ("evaluate a model: standard benchmarks, synthetic task suite, document recovery",
             ["minicpmv.data.synthetic.cli:register", "minicpmv.data.documents.cli:register",
              "minicpmv.eval.cli:register"]),
}

DIM, RESET = "\x1b[2m", "\x1b[0m"
REPL_HELP = """commands:
  /image PATH     attach an image to your next message      /video PATH   attach a video
  /think on|off   thinking mode (reasoning shown dimmed)    /reset        forget the conversation
  /help           this text                                 /quit         leave (also Ctrl-D)"""


def load_service(model: str | None, tokenizer: str | None = None):
    """Load model + processor (`minicpmv.api.load`; None = the embedded demo model) and wrap them in a ChatService."""
    from minicpmv.api import load
    from minicpmv.chat import ChatService

    with ticking(f"loading {model or 'the embedded demo model'}"):
        loaded_model, processor = load(model, tokenizer=tokenizer)
    return ChatService(loaded_model, processor)


@contextmanager
def ticking(desc: str, interval_s: float = 0.25):
    """A tqdm status line on stderr whose elapsed time ticks while the body runs (terminals only)."""
    from tqdm import tqdm

    with tqdm(desc=desc, file=sys.stderr, leave=False, disable=None, bar_format="{desc}: {elapsed}") as bar:
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(interval_s):
                bar.refresh()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()


def decode_videos(messages: list[dict]) -> list[dict]:
    """Video file parts -> decoded `Video(frames=...)` parts, with a progress bar per video (long decodes show).

    The service would decode them itself; doing it here only adds the progress bar.
    """
    from tqdm import tqdm

    from minicpmv.processor.video import Video, load_video

    def decoded(part: dict) -> Any:
        if part.get("type") != "video":
            return part
        options = {k: part[k] for k in ("fps", "packing", "max_groups") if k in part}
        with tqdm(desc=f"decoding {Path(part['path']).name}", unit="frame", file=sys.stderr, leave=False,
                  disable=None) as bar:
            def progress(done: int, total: int) -> None:
                bar.total, bar.n = total, done
                bar.refresh()

            video = load_video(Video(path=part["path"], **options), name=part["path"], progress=progress)
        return Video(frames=video.frames, temporal_ids=video.temporal_ids)

    return [{**m, "content": [decoded(p) for p in m["content"]]} if isinstance(m["content"], list) else m
            for m in messages]


# ---- chat ----

def _add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint folder or preset name (default: the embedded demo model)")
    p.add_argument("--tokenizer", default=None,
                   help="with a preset (random weights): folder holding tokenizer.json and preprocessor_config.json")


def _add_media_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="attach an image (repeatable)")
    p.add_argument("--video", action="append", default=[], metavar="PATH", help="attach a video (repeatable)")
    p.add_argument("--fps", type=float, default=None, help="video sampling rate (default: the official 5)")
    p.add_argument("--packing", type=int, default=None, help="video frames per 64-token group (1-6)")
    p.add_argument("--max-slice-nums", type=int, default=None, help="image slices (default 9; 1 = no slicing)")


def add_chat_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="ask one question, or chat interactively when no question is given",
                       description="One-shot: minicpmv chat --image a.jpg \"question\". Without a question: a REPL.")
    p.add_argument("question", nargs="*", help="the question, quoted or not (omit for an interactive chat)")
    _add_model_arg(p)
    _add_media_args(p)
    p.add_argument("--think", action="store_true", help="thinking mode: reason first, then answer")
    p.add_argument("--max-new-tokens", type=int, default=2048)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: the official 0.7)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--system", default="", help="system prompt")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="print tokens as they come (default: on when stdout is a terminal)")
    p.add_argument("--show-reasoning", action=argparse.BooleanOptionalAction, default=None,
                   help="print the reasoning (default: dimmed on a terminal, hidden otherwise)")
    p.set_defaults(func=run_chat)


def user_message(text: str, images: list[str], videos: list[str], media) -> dict:
    """A message in the ChatService form; media files are checked to exist here for a clear error."""
    parts: list[dict] = []
    for path in images + videos:
        if not Path(path).is_file():
            raise InputError(f"no such file: {path!r}; give the path of an image or video file")
    parts += [{"type": "image", "image": str(Path(p))} for p in images]
    video_opts = {k: v for k, v in (("fps", media.fps), ("packing", media.packing)) if v is not None}
    parts += [{"type": "video", "path": str(Path(p)), **video_opts} for p in videos]
    if text:
        parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


@dataclass
class Printer:
    """Writes a streamed completion: reasoning dimmed (terminal) or in <think> tags (`show_reasoning`), answer plain."""

    tty: bool
    show_reasoning: bool
    out: Any = field(default_factory=lambda: sys.stdout)
    _kind: str | None = None

    def write(self, kind: str, text: str) -> None:
        if kind == "reasoning" and not self.show_reasoning:
            return
        if kind != self._kind:
            self._switch(kind)
        self.out.write(text)
        self.out.flush()

    def _switch(self, kind: str) -> None:
        if self._kind == "reasoning":
            self.out.write(RESET + "\n\n" if self.tty else "\n</think>\n")
        if kind == "reasoning":
            self.out.write(DIM + "thinking: " if self.tty else "<think>\n")
        self._kind = kind

    def end(self) -> None:
        self._switch("answer")
        self.out.write("\n")
        self.out.flush()


async def answer(service, messages: list[dict], params, enable_thinking: bool, media, system: str,
                 printer: Printer, stream: bool) -> tuple[str, int, float]:
    """Run one completion, printing it; returns (answer text, completion tokens, seconds)."""
    start, text, tokens = time.perf_counter(), "", 0
    messages = decode_videos(messages)
    if stream:
        async for ev in service.stream(messages, params, enable_thinking=enable_thinking, media=media,
                                       system_prompt=system):
            printer.write(ev.kind, ev.text)
            text += ev.text if ev.kind == "answer" else ""
            tokens += ev.usage.completion_tokens if ev.finished and ev.usage else 0
    else:
        (result,) = await service.complete(messages, params, enable_thinking=enable_thinking, media=media,
                                           system_prompt=system)
        if result.reasoning:
            printer.write("reasoning", result.reasoning)
        printer.write("answer", result.answer)
        text, tokens = result.answer, result.usage.completion_tokens
    printer.end()
    return text, tokens, time.perf_counter() - start


def run_chat(args: argparse.Namespace) -> int:
    from minicpmv.inference.types import MediaOptions, SamplingParams

    tty = sys.stdout.isatty()
    media = MediaOptions(max_slice_nums=args.max_slice_nums, fps=args.fps, packing=args.packing)
    overrides = {k: v for k, v in (("temperature", args.temperature), ("seed", args.seed)) if v is not None}

    def make_params(think: bool) -> SamplingParams:
        return SamplingParams.for_mode(think, max_new_tokens=args.max_new_tokens, **overrides)

    show = tty if args.show_reasoning is None else args.show_reasoning
    printer = Printer(tty=tty, show_reasoning=show)
    stream = tty if args.stream is None else args.stream
    question = " ".join(args.question)
    if not question:
        first = user_message("", args.image, args.video, media)["content"]
        service = load_service(args.model, args.tokenizer)
        return Repl(service, make_params, media, args.system, printer, stream, args.think, pending=first).run()
    service = load_service(args.model, args.tokenizer)
    messages = [user_message(question, args.image, args.video, media)]
    asyncio.run(answer(service, messages, make_params(args.think), args.think, media, args.system, printer, stream))
    return 0


@dataclass
class Repl:
    """Interactive chat with history; slash commands attach media and switch thinking."""

    service: Any
    make_params: Callable[[bool], Any]
    media: Any
    system: str
    printer: Printer
    stream: bool
    think: bool = False
    pending: list[dict] = field(default_factory=list)  # parts attached to the next message
    history: list[dict] = field(default_factory=list)

    def run(self) -> int:
        _enable_line_editing()
        loop = asyncio.new_event_loop()  # one loop for the whole session: the service may keep tasks on it
        print(f"minicpmv chat ({self.service.model_name}); /help for commands, /quit to leave", file=sys.stderr)
        try:
            while (line := self._read()) is not None:
                if line.startswith("/"):
                    if self.command(line) == "quit":
                        break
                elif line.strip() or self.pending:
                    self._turn(loop, line.strip())
        finally:
            loop.close()
        return 0

    def _read(self) -> str | None:
        try:
            return input("you> " if sys.stdin.isatty() else "")
        except EOFError:
            return None

    def command(self, line: str) -> str | None:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return "quit"
        if name in ("/image", "/video") and arg:
            kind = name[1:]
            try:
                part = user_message("", [arg] * (kind == "image"), [arg] * (kind == "video"), self.media)
            except InputError as e:
                _note(f"error: {e}")
                return None
            self.pending += part["content"]
            _note(f"attached {kind} {arg} to the next message")
        elif name == "/think" and arg in ("on", "off"):
            self.think = arg == "on"
            _note(f"thinking {arg}")
        elif name == "/reset":
            self.history.clear()
            self.pending.clear()
            _note("conversation reset")
        else:
            _note(REPL_HELP)
        return None

    def _turn(self, loop: asyncio.AbstractEventLoop, text: str) -> None:
        message = {"role": "user", "content": self.pending + ([{"type": "text", "text": text}] if text else [])}
        messages = self.history + [message]
        task = loop.create_task(answer(self.service, messages, self.make_params(self.think), self.think,
                                       self.media, self.system, self.printer, self.stream))
        try:
            reply, tokens, seconds = loop.run_until_complete(task)
        except KeyboardInterrupt:
            task.cancel()
            loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
            self.printer.end()
            _note("[interrupted]")
            return
        except InputError as e:
            _note(f"error: {e}")
            return
        self.history += [message, {"role": "assistant", "content": reply}]
        self.pending = []
        _note(f"[{tokens} tokens, {seconds:.1f} s, {tokens / max(seconds, 1e-9):.1f} tok/s]")


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _enable_line_editing() -> None:
    """Arrow keys and input history when the readline module exists (not on every platform)."""
    try:
        import readline  # noqa: F401  (importing it is what enables line editing for input())
    except ImportError:
        pass


# ---- serve ----

def add_serve_command(sub: argparse._SubParsersAction) -> None:
    from minicpmv.serve import MediaPolicy, ServerConfig

    d, m = ServerConfig(), MediaPolicy()
    p = sub.add_parser("serve", help="OpenAI-compatible server (/v1/chat/completions) with a web chat at /")
    _add_model_arg(p)
    p.add_argument("--host", default=d.host, help="interface to listen on (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--model-name", default=None, help="model id reported to clients (default: the model's)")
    p.add_argument("--api-key", default=os.environ.get("MINICPMV_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $MINICPMV_API_KEY; unset = no key)")
    p.add_argument("--allowed-media-dir", type=Path, default=None,
                   help="serve local image/video paths from under this folder only (default: local paths refused)")
    p.add_argument("--allow-remote-media", action="store_true",
                   help="fetch http(s) media URLs (never from loopback, link-local or private addresses)")
    p.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / 2**20)
    p.add_argument("--max-image-pixels", type=int, default=m.max_image_pixels)
    p.add_argument("--max-video-frames", type=int, default=m.max_video_frames)
    p.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens)
    p.add_argument("--max-tokens-limit", type=int, default=d.max_tokens_limit, help="largest max_tokens allowed")
    p.add_argument("--max-n", type=int, default=d.max_n)
    p.add_argument("--max-in-flight", type=int, default=d.max_in_flight, help="concurrent requests before 429")
    p.add_argument("--shutdown-timeout", type=float, default=d.shutdown_timeout_s,
                   help="seconds in-flight requests get to finish on shutdown")
    p.set_defaults(func=run_serve)


def server_config(args: argparse.Namespace):
    from minicpmv.serve import MediaPolicy, ServerConfig

    if args.allowed_media_dir is not None and not args.allowed_media_dir.is_dir():
        raise InputError(f"--allowed-media-dir {str(args.allowed_media_dir)!r} is not a folder")
    media = MediaPolicy(allowed_media_dir=args.allowed_media_dir, allow_remote_media=args.allow_remote_media,
                        max_image_pixels=args.max_image_pixels, max_video_frames=args.max_video_frames,
                        max_media_bytes=int(args.max_body_mb * 2**20))
    return ServerConfig(host=args.host, port=args.port, api_key=args.api_key or None, model_name=args.model_name,
                        max_body_bytes=int(args.max_body_mb * 2**20), max_n=args.max_n,
                        max_tokens_limit=args.max_tokens_limit, max_prompt_tokens=args.max_prompt_tokens,
                        max_in_flight=args.max_in_flight, shutdown_timeout_s=args.shutdown_timeout, media=media)


def run_serve(args: argparse.Namespace) -> int:
    from minicpmv.serve.openai_server import run_server

    config = server_config(args)
    service = load_service(args.model, args.tokenizer)
    _note(f"serving {config.model_name or service.model_name} on http://{config.host}:{config.port}/ "
          f"(API at /v1, key {'required' if config.api_key else 'not required'})")
    run_server(service, config)
    return 0


# ---- info ----

def add_info_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="model size and parameters; with --image/--video/--size/--duration, the tokens "
                                    "they would cost, next to Qwen2.5-VL's")
    _add_model_arg(p)
    _add_media_args(p)
    p.add_argument("--size", action="append", default=[], metavar="WxH",
                   help="an image of this size (with --duration: the frame size); repeatable; alone, no model is loaded")
    p.add_argument("--duration", action="append", type=float, default=[], metavar="S",
                   help="a video of S seconds (frames of --size, default 448x448); repeatable")
    p.add_argument("--source-fps", type=float, default=30.0, help="frame rate of the --duration videos (default 30)")
    p.set_defaults(func=run_info)


def model_summary(model) -> list[tuple[str, str]]:
    """(label, value) rows: parameter counts per top-level component, total size, dtype and device."""
    rows, total, nbytes = [], 0, 0
    for name, child in model.named_children():
        count = sum(p.numel() for p in child.parameters())
        rows.append((f"  {name}", f"{count:,} parameters"))
        total += count
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    first = next(model.parameters())
    return [("parameters", f"{total:,}"), *rows, ("size", f"{nbytes / 2**20:,.1f} MiB"),
            ("dtype", str(first.dtype).removeprefix("torch.")), ("device", str(first.device))]


def input_cost(service, images: list[str], videos: list[str], media) -> list[tuple[str, str]]:
    """(label, value) rows: the visual and prompt tokens of each item alone, then of all of them in one message."""
    rows = []
    for kind, path in [("image", p) for p in images] + [("video", p) for p in videos]:
        u = service.count_tokens([user_message("", [path] * (kind == "image"), [path] * (kind == "video"), media)],
                                 media)
        rows.append((f"{kind} {path}", f"{u.visual_tokens:,} visual tokens ({u.prompt_tokens:,} prompt tokens alone)"))
    if len(rows) > 1:
        u = service.count_tokens([user_message("", images, videos, media)], media)
        rows.append(("all together", f"{u.visual_tokens:,} visual tokens, {u.prompt_tokens:,} prompt tokens"))
    return rows


def versus_qwen(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(label, value) rows: visual tokens of each --image/--video/--size/--duration input under MiniCPM-V 4.5's
    settings (the --model folder's preprocessor_config.json, else the official one) and Qwen2.5-VL's defaults."""
    import json

    from minicpmv.config import ProcessorConfig
    from minicpmv.eval import tokens

    pre = Path(args.model or "") / "preprocessor_config.json"
    cfg = ProcessorConfig.from_hf_dict(json.loads(pre.read_text())) if args.model and pre.is_file() else ProcessorConfig()
    ours = tokens.OurSettings(processor=cfg, max_slice_nums=args.max_slice_nums, choose_fps=args.fps or 5.0,
                              packing=args.packing)
    sizes = [tokens.parse_size(s) for s in args.size]
    items = [(f"image {p}", tokens.compare_image(*tokens.probe_image(p), ours)) for p in args.image]
    items += [(f"video {p}", tokens.compare_video(tokens.probe_video(p), ours)) for p in args.video]
    if args.duration:
        items += [(f"video {d:g} s {w}x{h}", tokens.compare_video(tokens.VideoSpec.of(d, w, h, args.source_fps), ours))
                  for d in args.duration for w, h in sizes or [(448, 448)]]
    else:
        items += [(f"image {w}x{h}", tokens.compare_image(w, h, ours)) for w, h in sizes]
    if not items:
        return []
    slices = cfg.max_slice_nums if ours.max_slice_nums is None else ours.max_slice_nums
    rows = [("vs Qwen2.5-VL", f"MiniCPM-V: {cfg.image_feature_size} tokens per span, <= {slices} slices, video "
             f"{ours.choose_fps:g} fps, packing {ours.packing or 'auto'}; Qwen2.5-VL: qwen_vl_utils defaults")]
    for label, c in items:
        rows += [(label, f"{c.ours.visual_tokens:,} vs {c.qwen.visual_tokens:,} visual tokens, ratio {c.ratio:.3f} "
                         f"(prompt {c.ours.prompt_tokens:,} vs {c.qwen.prompt_tokens:,})"),
                 ("  MiniCPM-V", c.ours.detail), ("  Qwen2.5-VL", c.qwen.detail)]
    return rows


def run_info(args: argparse.Namespace) -> int:
    from minicpmv.inference.types import MediaOptions

    rows = []
    if args.model or args.image or args.video or not (args.size or args.duration):
        service = load_service(args.model, args.tokenizer)
        rows += [("model", service.model_name), *model_summary(service.model)]
        media = MediaOptions(max_slice_nums=args.max_slice_nums, fps=args.fps, packing=args.packing)
        rows += input_cost(service, args.image, args.video, media)
    rows += versus_qwen(args)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0


# ---- entry point ----

def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser for `command` (a GROUPS name loads that group's modules); others get a stub entry."""
    parser = argparse.ArgumentParser(prog="minicpmv", description="MiniCPM-V 4.5: chat, serve, inspect, train, evaluate.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in SUBCOMMANDS:
        _call(entry, sub)
    for entry in GROUPS[command][1] if command in GROUPS else []:
        _call(entry, sub)  # may add other groups too; they are complete then
    for group, (help_text, _) in GROUPS.items():
        if group not in sub.choices:
            sub.add_parser(group, help=help_text, add_help=False)
    return parser


def command_group(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """The sub-command list of `minicpmv NAME` (train / data / eval), creating `NAME` when it does not exist
    yet, so several modules can add commands to one group in any order. argparse has no public way to reach
    a parser's sub-commands, so an existing one is found among the parser's actions."""
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=help)
        return parser.add_subparsers(dest=f"{name}_command", metavar=f"{name.upper()}_COMMAND", required=True)
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _call(entry: str, sub: argparse._SubParsersAction) -> None:
    module, _, name = entry.partition(":")
    getattr(importlib.import_module(module), name)(sub)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except InputError as e:
        print(f"minicpmv {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
