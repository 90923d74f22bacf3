"""Readers for local benchmark files: VLMEvalKit-style TSVs (images) and a Video-MME-style JSON/JSONL layout.

Nothing is downloaded: the user points at files. Every problem raises InputError naming the file, the
row (its line and `index`) and the column, and saying how to fix it.

VLMEvalKit TSV (one file per benchmark, as VLMEvalKit stores them under ~/LMUData), tab-separated with a
header row, fields quoted the csv way when they hold tabs, quotes or newlines:
    index       unique row id (text or number)
    image       base64 of the encoded image; or the `index` of another row whose image this row reuses
                (a value of at most 64 characters, VLMEvalKit's convention); or a Python-style list of
                base64 strings "['...', '...']" for several images
    image_path  instead of `image`: a path, or a list of paths, relative to the TSV's folder
    question    the question text
    A, B, C...  option texts (multiple choice); empty cells are absent options
    answer      the option letter (multiple choice), Yes/No (yes/no sets), or the reference answer, or a
                list of them "['ans1', 'ans2']" (open VQA: all annotators' answers)
    category, hint, and any other columns (l2-category, split, set_id ...) are kept as text.

Video-MME-style questions (`read_video_questions`): a .json file holding a list of objects, or a .jsonl file
with one object per line. Fields per question:
    question_id  unique id (required)
    video        path of the video file, relative to the question file's folder; or
    videoID      a name looked up as <folder>/{video,videos,data,.}/<videoID>.{mp4,MP4,mkv,webm,avi,mov}
    question, answer (an option letter)
    options      ["A. text", "B. text", ...] (the official layout), a list of plain texts (lettered A, B, ...
                 in order) or an object {"A": "text", ...}
    duration     bucket label: short / medium / long in Video-MME (default 'unspecified')
    subtitle     optional .srt path relative to the folder; default <folder>/{subtitle,subtitles}/<videoID>.srt
    domain, sub_category, task_type and any other fields are kept as text.
The official parquet converts to this layout with one line of pandas:
    pandas.read_parquet("videomme/test-00000-of-00001.parquet").to_json("videomme.jsonl", orient="records", lines=True)
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image, UnidentifiedImageError

from minicpmv.errors import InputError

ImageSource = bytes | Path
_OPTION_COLUMN = re.compile(r"^[A-Z]$")
_KNOWN_COLUMNS = {"index", "image", "image_path", "question", "answer", "category", "hint"}
_REFERENCE_MAX_CHARS = 64  # VLMEvalKit: an image cell this short names another row


@dataclass(frozen=True)
class ImageQuestion:
    """One TSV row.

    images:  encoded image bytes (decoded from base64) or file paths, in order (usually one)
    options: {'A': text, ...} in column order; {} for open questions
    answers: ('B',) for multiple choice / ('Yes',) for yes/no / all reference answers for open VQA
    fields:  every other column as text (l2-category, split, set_id, ...)
    line:    line of the row in the file (for messages)
    """

    id: str
    question: str
    images: tuple[ImageSource, ...]
    options: dict[str, str]
    answers: tuple[str, ...]
    category: str = ""
    hint: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True)
class VideoQuestion:
    """One Video-MME-style question (see the module docstring for the file layout)."""

    id: str
    video: Path
    question: str
    options: dict[str, str]
    answer: str
    duration: str = "unspecified"
    subtitle: Path | None = None
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Subtitle:
    """One subtitle cue: shown from start_s (inclusive) to end_s (exclusive)."""

    start_s: float
    end_s: float
    text: str


# ---- TSV ----------------------------------------------------------------------------------------------------


def read_tsv(path: str | Path, kind: str) -> list[ImageQuestion]:
    """All rows of a VLMEvalKit-style TSV, checked for `kind` ('mcq', 'yesno' or 'vqa').

    Checks: required columns (index, question, answer, image or image_path), one field per header
    column, unique non-empty index, decodable images (base64 and image header, or existing files),
    image references that name a row with an image, and for 'mcq' at least two options and an answer
    among their letters.
    Example: a TSV with header 'index\\timage\\tquestion\\tA\\tB\\tanswer' and a row
    '7\\t<base64 png>\\tWhich?\\tcat\\tdog\\tB' -> [ImageQuestion(id='7', options={'A': 'cat', 'B': 'dog'},
    answers=('B',), images=(b'\\x89PNG...',), line=2, ...)].
    """
    path = Path(path)
    header, records = _read_records(path)
    missing = [c for c in ("index", "question", "answer") if c not in header]
    if missing or not ({"image", "image_path"} & set(header)):
        need = missing + ([] if {"image", "image_path"} & set(header) else ["image (or image_path)"])
        raise InputError(f"{path}: missing column(s) {', '.join(need)}; the header has {', '.join(header)}. "
                         "A VLMEvalKit TSV needs index, image (base64) or image_path, question and answer")
    option_columns = [c for c in header if _OPTION_COLUMN.match(c)]
    by_index: dict[str, dict[str, str]] = {}
    for line, rec in records:
        index = rec["index"].strip()
        if not index:
            raise InputError(f"{path}: line {line}: column 'index' is empty; every row needs a unique index")
        if index in by_index:
            raise InputError(f"{path}: line {line}: index {index!r} repeats the row at line {by_index[index]['__line']}")
        by_index[index] = {**rec, "__line": str(line)}
    return [_question(path, rec, by_index, option_columns, kind) for rec in by_index.values()]


def _read_records(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line, {column: text}) per row; InputError when a row has the wrong number of fields."""
    if not path.is_file():
        raise InputError(f"no such benchmark file: {str(path)!r}; give the path of a VLMEvalKit-style .tsv")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images are far above csv's 128 KiB default
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter="\t")
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise InputError(f"{path}: the file is empty; expected a header row (index, image, question, ...)")
            rows = []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise InputError(f"{path}: line {reader.line_num}: {len(row)} fields but the header has "
                                     f"{len(header)}; check for an unquoted tab or an unbalanced quote")
                rows.append((reader.line_num, dict(zip(header, row))))
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e}); is this a TSV?") from None
    except csv.Error as e:
        raise InputError(f"{path}: not a readable TSV ({e})") from None
    return header, rows


def _question(path: Path, rec: dict[str, str], by_index: dict[str, dict[str, str]], option_columns: list[str],
              kind: str) -> ImageQuestion:
    line, index = int(rec["__line"]), rec["index"].strip()
    where = f"{path}: line {line} (index {index})"
    options = {c: rec[c] for c in option_columns if rec[c].strip()}
    answers = _answers(rec["answer"], where)
    if kind == "mcq":
        if len(options) < 2:
            raise InputError(f"{where}: a multiple-choice row needs at least two options in columns A, B, ...; "
                             f"found {sorted(options) or 'none'}")
        if answers[0].strip() not in options:
            raise InputError(f"{where}: column 'answer' is {answers[0]!r}, not one of the option letters "
                             f"{', '.join(options)}")
        answers = (answers[0].strip(),)
    extra = {k: v for k, v in rec.items() if k not in _KNOWN_COLUMNS and k not in option_columns and k != "__line"}
    hint = rec.get("hint", "").strip() or None
    return ImageQuestion(index, rec["question"], _images(path, rec, by_index, where), options, answers,
                         rec.get("category", "").strip(), hint, extra, line)


def _answers(text: str, where: str) -> tuple[str, ...]:
    """'B' -> ('B',); "['a', 'b']" -> ('a', 'b') (a Python list literal of strings)."""
    value = text.strip()
    if value.startswith("[") and value.endswith("]"):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, list) and parsed:
            return tuple(str(a) for a in parsed)
    if not value:
        raise InputError(f"{where}: column 'answer' is empty; every row needs its reference answer")
    return (text,)


def _images(path: Path, rec: dict[str, str], by_index: dict[str, dict[str, str]], where: str) -> tuple[ImageSource, ...]:
    """The row's images from `image` (base64, list of base64, or another row's index) or `image_path`."""
    cell = rec.get("image", "").strip()
    if not cell:
        paths = rec.get("image_path", "").strip()
        if not paths:
            raise InputError(f"{where}: columns 'image' and 'image_path' are both empty; give the image")
        return tuple(_image_file(path.parent / p, where) for p in _as_list(paths))
    if len(cell) <= _REFERENCE_MAX_CHARS and not cell.startswith("["):
        target = by_index.get(cell)
        if target is None:
            raise InputError(f"{where}: column 'image' is {cell!r}, which is neither base64 image data nor the "
                             "index of another row")
        cell = target.get("image", "").strip()
        if len(cell) <= _REFERENCE_MAX_CHARS:
            raise InputError(f"{where}: column 'image' refers to row {target['index']!r}, whose own image is not "
                             "image data; a reference must name a row that holds the image")
        where = f"{where} (image of index {target['index']})"
    return tuple(_decode_base64(b, f"{where}, column 'image' item {k}") for k, b in enumerate(_as_list(cell)))


def _as_list(cell: str) -> list[str]:
    """"['a', 'b']" -> ['a', 'b']; 'a' -> ['a']."""
    if cell.startswith("["):
        try:
            parsed = ast.literal_eval(cell)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, list) and parsed and all(isinstance(p, str) for p in parsed):
            return parsed
    return [cell]


def _decode_base64(text: str, where: str) -> bytes:
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{where}: not valid base64 image data ({e}); VLMEvalKit TSVs hold base64-encoded "
                         "JPEG/PNG bytes") from None
    _check_image(io.BytesIO(data), where)
    return data


def _image_file(path: Path, where: str) -> Path:
    if not path.is_file():
        raise InputError(f"{where}: column 'image_path' names {str(path)!r}, which does not exist "
                         "(paths are relative to the TSV's folder)")
    _check_image(path, where)
    return path


def _check_image(source: Any, where: str) -> None:
    """Read the image header only (cheap); InputError when it is not an image PIL can open."""
    try:
        with Image.open(source) as image:
            image.size  # noqa: B018  (the header is parsed by open; size proves it)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"{where}: not an image ({e})") from None


def load_images(question: ImageQuestion) -> list[Image.Image]:
    """The question's images as RGB PIL images (EXIF orientation applied)."""
    from minicpmv.processor.image import load_image

    return [load_image(src, name=f"image {k} of index {question.id}") for k, src in enumerate(question.images)]


# ---- Video-MME style ----------------------------------------------------------------------------------------

_VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")
_LETTERED = re.compile(r"^\s*([A-Z])\s*[.)]\s*(.*)$", re.S)


def read_video_questions(path: str | Path) -> list[VideoQuestion]:
    """All questions of a Video-MME-style .json / .jsonl file (layout in the module docstring).

    Example line: {"question_id": "001-1", "videoID": "fFjv93ACGo8", "duration": "short", "question": "...",
    "options": ["A. Apples.", "B. Candles.", "C. Berries.", "D. The three kinds are of the same number."],
    "answer": "C"} -> VideoQuestion(id='001-1', video=<folder>/video/fFjv93ACGo8.mp4, options={'A': 'Apples.', ...}).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such question file: {str(path)!r}; give a Video-MME-style .json or .jsonl file")
    items = _json_items(path)
    seen: dict[str, int] = {}
    questions = []
    for k, item in items:
        where = f"{path}: {'line' if path.suffix == '.jsonl' else 'item'} {k}"
        q = _video_question(path.parent, item, where)
        if q.id in seen:
            raise InputError(f"{where}: question_id {q.id!r} repeats {seen[q.id]}")
        seen[q.id] = k
        questions.append(q)
    return questions


def _json_items(path: Path) -> list[tuple[int, dict]]:
    """(line or position, object) of a .jsonl (one object per non-blank line) or .json (a list) file."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".jsonl":
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}: line {n} is not valid JSON ({e.msg} at column {e.colno})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); use a list of question "
                             "objects, or a .jsonl file with one per line") from None
        if not isinstance(data, list):
            raise InputError(f"{path}: the JSON holds a {type(data).__name__}; expected a list of question objects")
        items = list(enumerate(data))
    for n, item in items:
        if not isinstance(item, dict):
            raise InputError(f"{path}: entry {n} is a {type(item).__name__}; every question is a JSON object")
    return items


def _video_question(folder: Path, item: dict, where: str) -> VideoQuestion:
    def text(key: str, required: bool = True) -> str:
        value = item.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise InputError(f"{where}: field {key!r} is missing or empty")
            return ""
        if not isinstance(value, (str, int, float)):
            raise InputError(f"{where}: field {key!r} must be text, got {type(value).__name__}")
        return str(value)

    qid = text("question_id")
    options = _video_options(item.get("options"), where)
    answer = text("answer").strip()
    if answer not in options:
        raise InputError(f"{where}: field 'answer' is {answer!r}, not one of the option letters {', '.join(options)}")
    video_id = text("videoID", required=False)
    video = _find_video(folder, text("video", required=False), video_id, where)
    subtitle = _find_subtitle(folder, text("subtitle", required=False), video_id, where)
    known = {"question_id", "video", "videoID", "question", "options", "answer", "duration", "subtitle"}
    extra = {k: str(v) for k, v in item.items() if k not in known}
    return VideoQuestion(qid, video, text("question"), options, answer, text("duration", False) or "unspecified",
                         subtitle, extra)


def _video_options(value: Any, where: str) -> dict[str, str]:
    """["A. x", "B. y"] or ["x", "y"] or {"A": "x", "B": "y"} -> {'A': 'x', 'B': 'y'}."""
    if isinstance(value, dict) and value and all(isinstance(k, str) and _OPTION_COLUMN.match(k) for k in value):
        return {k: str(v) for k, v in value.items()}
    if isinstance(value, list) and len(value) >= 2 and all(isinstance(v, str) for v in value):
        lettered = [_LETTERED.match(v) for v in value]
        if all(lettered):
            return {m.group(1): m.group(2).strip() for m in lettered}
        if not any(lettered):
            return {chr(ord("A") + k): v for k, v in enumerate(value)}
    raise InputError(f"{where}: field 'options' must be a list of at least two texts (all 'A. ...' style or all "
                     f"plain) or an object {{\"A\": ..., \"B\": ...}}; got {value!r:.120}")


def _find_video(folder: Path, given: str, video_id: str, where: str) -> Path:
    if given:
        path = folder / given
        if not path.is_file():
            raise InputError(f"{where}: field 'video' names {str(path)!r}, which does not exist "
                             "(paths are relative to the question file's folder)")
        return path
    if not video_id:
        raise InputError(f"{where}: give the video, as field 'video' (a path) or 'videoID' (a name)")
    places = [folder / sub / (video_id + suffix) for sub in ("video", "videos", "data", ".") for suffix in _VIDEO_SUFFIXES]
    found = next((p for p in places if p.is_file()), None)
    if found is None:
        raise InputError(f"{where}: no video file for videoID {video_id!r}; looked for {video_id}.mp4 (or .mkv, "
                         f".webm, .avi, .mov) in {folder}/video, videos, data and {folder}")
    return found


def _find_subtitle(folder: Path, given: str, video_id: str, where: str) -> Path | None:
    if given:
        path = folder / given
        if not path.is_file():
            raise InputError(f"{where}: field 'subtitle' names {str(path)!r}, which does not exist")
        return path
    if not video_id:
        return None
    return next((p for p in (folder / "subtitle" / f"{video_id}.srt", folder / "subtitles" / f"{video_id}.srt")
                 if p.is_file()), None)


# ---- subtitles ----------------------------------------------------------------------------------------------

_TIME = re.compile(r"(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})")
_TAG = re.compile(r"<[^>]+>")


def parse_srt(text: str, name: str = "subtitles") -> list[Subtitle]:
    """SubRip cues, HTML-style tags removed (Video-MME wraps text in <font ...>).

    Example: '1\\n00:00:01,500 --> 00:00:03,000\\n<font color="white">Hello</font>\\nthere\\n' ->
    [Subtitle(1.5, 3.0, 'Hello there')].
    """
    cues = []
    for n, block in enumerate(re.split(r"\n\s*\n", text.replace("\r\n", "\n").strip()), 1):
        lines = [l for l in block.split("\n") if l.strip()]
        timing = next((k for k, l in enumerate(lines) if "-->" in l), None)
        if timing is None:
            if not lines:
                continue
            raise InputError(f"{name}: cue {n} has no 'start --> end' time line: {block[:80]!r}")
        start, _, end = lines[timing].partition("-->")
        cue_text = " ".join(_TAG.sub("", l).strip() for l in lines[timing + 1:]).strip()
        cues.append(Subtitle(_seconds(start, name, n), _seconds(end, name, n), cue_text))
    return cues


def _seconds(stamp: str, name: str, cue: int) -> float:
    m = _TIME.search(stamp)
    if m is None:
        raise InputError(f"{name}: cue {cue}: bad time {stamp.strip()!r}; expected HH:MM:SS,mmm")
    h, mi, s, ms = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def subtitles_at(cues: Sequence[Subtitle], times_s: Iterable[float]) -> list[str]:
    """Texts of the cues shown at any of `times_s` (the sampled frames), in cue order, each once, empty ones
    dropped: Video-MME's 'subtitles of the sampled frames'. Example: cues (0-2 'a'), (2-4 'b'), (4-6 'c')
    and times [0.5, 1.5, 4.2] -> ['a', 'c']."""
    times = sorted(times_s)
    return [c.text for c in cues if c.text and any(c.start_s <= t < c.end_s for t in times)]
