"""Benchmark readers and complete runs of every runner on small fixture sets written here, with the demo model.

Each fixture is a handful of rows (images drawn with Pillow, a short video written with PyAV). A run must
produce one result line per question, a final table, and metrics equal to the scorers applied to the
stored predictions (the model's answers are not asserted: the demo model is weak). Resume and --limit
are checked by counting generations.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from minicpmv.errors import InputError
from minicpmv.eval import datasets, scorers
from minicpmv.eval.prompts import official_settings, resolve_benchmark, row_rng
from minicpmv.eval.runner import VideoQaRunner, evaluate, hallusion_keys, read_results
from media import CODECS, write_video

TOKENS = 4  # generation budget of the runs: the pipeline is under test, not the answers


# ---- fixtures ------------------------------------------------------------------------------------------------

def drawing(colour: tuple[int, int, int], shape: str = "ellipse", size: tuple[int, int] = (96, 64),
            text: str = "") -> bytes:
    """A PNG: one coloured shape (and optional text) on a light background."""
    image = Image.new("RGB", size, (240, 236, 226))
    d = ImageDraw.Draw(image)
    getattr(d, shape)((20, 10, 60, 50), fill=colour)
    if text:
        d.text((4, 2), text, fill=(0, 0, 0))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)
    return path


RED, BLUE, GREEN = (220, 40, 40), (40, 40, 220), (40, 170, 60)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bench")
    red, blue = b64(drawing(RED)), b64(drawing(BLUE, "rectangle"))
    out = {}
    out["mcq"] = write_tsv(d / "MMStar.tsv", ["index", "image", "question", "A", "B", "C", "answer", "category", "hint"], [
        ["0", red, "What colour is the circle?", "red", "blue", "green", "A", "colour", ""],
        ["1", blue, "What shape is it?", "circle", "square", "triangle", "B", "shape", "Count the corners."],
        ["2", "0", "Which colour?\tWith a tab", "green", "red", "", "B", "colour", ""],  # reuses row 0's image
    ])
    out["circular"] = write_tsv(d / "MMBench_DEV_EN.tsv", ["index", "image", "question", "A", "B", "answer", "category"], [
        ["3", red, "Colour?", "red", "blue", "A", "c"],
        ["1000003", "3", "Colour?", "blue", "red", "B", "c"],  # the same question, options rotated
        ["4", blue, "Colour?", "red", "blue", "B", "c"],
    ])
    out["hallusion"] = write_tsv(d / "HallusionBench.tsv", ["index", "image", "question", "answer", "category", "l2-category"], [
        ["VD_figure_0_0_0_0", red, "Is the circle red?", "Yes", "VD", "figure"],
        ["VD_figure_0_0_1_0", blue, "Is the circle red?", "No", "VD", "figure"],
        ["VS_chart_0_1_0_1", red, "Is there a circle?", "Yes", "VS", "chart"],
    ])
    out["textvqa"] = write_tsv(d / "TextVQA_VAL.tsv", ["index", "image", "question", "answer"], [
        ["0", b64(drawing(RED, text="STOP")), "What does the sign say?", str(["stop"] * 7 + ["stop sign"] * 3)],
        ["1", blue, "What colour is it?", str(["blue"] * 10)],
    ])
    out["docvqa"] = write_tsv(d / "DocVQA_VAL.tsv", ["index", "image", "question", "answer"], [
        ["0", b64(drawing(GREEN, text="Total 42")), "What is the total?", "['42', 'forty two']"],
        ["1", red, "Who signed?", "Smith"],
    ])
    out["chartqa"] = write_tsv(d / "ChartQA_TEST.tsv", ["index", "image", "question", "answer"], [
        ["0", b64(drawing(BLUE, "rectangle", text="12")), "What is the value?", "12"],
        ["1", red, "Is it red?", "Yes"],
    ])
    out["ocrbench"] = write_tsv(d / "OCRBench.tsv", ["index", "image", "question", "answer", "category"], [
        ["0", b64(drawing(RED, text="HELLO")), "What is written?", "['hello']", "Regular Text Recognition"],
        ["1", b64(drawing(BLUE, text="x+1")), "Write the formula.", "['x+1']",
         "Handwritten Mathematical Expression Recognition"],
        ["2", b64(drawing(GREEN, text="Invoice 7")), "What is the invoice number?", "['7']", "Key Information Extraction"],
    ])
    out["video"] = video_set(d)
    return out


def video_set(d: Path) -> Path:
    """A 1.2 s clip (6 frames at 5 fps), three questions, and a subtitle file with a cue after the clip ends."""
    (d / "video").mkdir()
    (d / "subtitle").mkdir()
    write_video(d / "video" / "clip.mp4", CODECS["mp4-h264"], n_frames=6, fps=5)
    (d / "subtitle" / "clip.srt").write_text(
        "1\n00:00:00,000 --> 00:00:00,500\n<font color=\"white\">first words</font>\n\n"
        "2\n00:00:00,500 --> 00:00:01,200\nsecond words\n\n"
        "3\n00:00:05,000 --> 00:00:06,000\nafter the end\n")
    rows = [
        {"question_id": "1-1", "videoID": "clip", "duration": "short", "question": "What moves?",
         "options": ["A. Nothing.", "B. A bar code.", "C. A car.", "D. A dog."], "answer": "B", "task_type": "OCR"},
        {"question_id": "1-2", "videoID": "clip", "duration": "short", "question": "What colours?",
         "options": ["A. Black and white.", "B. Red.", "C. Green.", "D. Blue."], "answer": "A"},
        {"question_id": "2-1", "video": "video/clip.mp4", "duration": "long", "question": "How long is it?",
         "options": {"A": "About a second.", "B": "An hour."}, "answer": "A"},
    ]
    path = d / "videomme.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def demo():
    """The embedded demo model, run on one thread: its matrices are tiny, and on a shared 2-core machine a
    second thread costs more in synchronisation than it gains (several times slower under load)."""
    import torch

    import minicpmv

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield minicpmv.load()
    torch.set_num_threads(threads)


def run(name: str, data: Path, demo, out: Path, **kwargs):
    model, processor = demo
    kwargs.setdefault("max_new_tokens", TOKENS)
    return evaluate(name, data, model, processor, out, model_name="demo", progress=False, **kwargs)


def stored(report) -> list[dict]:
    return [json.loads(l) for l in report.results_path.read_text().splitlines()]


# ---- complete runs -------------------------------------------------------------------------------------------

def test_mcq_run_thinking_mode(files, demo, tmp_path):
    report = run("MMStar", files["mcq"], demo, tmp_path)
    rows = stored(report)
    assert [r["id"] for r in rows] == ["0", "1", "2"] and report.generated == 3
    assert report.settings.thinking and all(r["output"].startswith("I") for r in rows)  # the '<think>\nI' prefill
    questions = {q.id: q for q in datasets.read_tsv(files["mcq"], "mcq")}
    expected = [float(scorers.extract_choice(r["prediction"], questions[r["id"]].options) == questions[r["id"]].answers[0])
                for r in rows]
    assert [r["score"] for r in rows] == expected
    assert report.metrics["Overall"] == pytest.approx(100 * sum(expected) / 3)
    assert report.unparsed == sum(r["extracted"] is None for r in rows)
    assert "| Overall |" in report.table and "| colour |" in report.table and "| shape |" in report.table
    assert (tmp_path / "MMStar_think.md").read_text().strip() == report.table
    assert all(r["visual_tokens"] > 0 and r["completion_tokens"] <= TOKENS for r in rows)


def test_mcq_circular_groups_rotations(files, demo, tmp_path):
    report = run("MMBench_DEV_EN", files["circular"], demo, tmp_path, think="off", num_beams=1)
    scores = {r["id"]: r["score"] for r in stored(report)}
    groups = {"3": scores["3"] == 1 and scores["1000003"] == 1, "4": scores["4"] == 1}
    assert report.metrics["Overall"] == pytest.approx(100 * sum(groups.values()) / 2)
    assert report.metrics["per-row accuracy"] == pytest.approx(100 * sum(scores.values()) / 3)


def test_yes_no_run_hallusionbench(files, demo, tmp_path):
    report = run("HallusionBench", files["hallusion"], demo, tmp_path, think="off", num_beams=1)
    rows = stored(report)
    truth = {"VD_figure_0_0_0_0": "Yes", "VD_figure_0_0_1_0": "No", "VS_chart_0_1_0_1": "Yes"}
    for r in rows:
        said = scorers.normalize_yes_no(r["prediction"])
        assert r["score"] == float(said == truth[r["id"]])
        assert r["extracted"] == (None if said == "Unknown" else said)
    assert set(report.metrics) >= {"aAcc", "fAcc", "qAcc", "Overall", "VD aAcc", "VS qAcc"}
    assert report.metrics["aAcc"] == pytest.approx(100 * sum(r["score"] for r in rows) / 3)
    assert "| fAcc |" in report.table


@pytest.mark.parametrize("name, key, metric", [
    ("TextVQA_VAL", "textvqa", scorers.vqa_accuracy),
    ("DocVQA_VAL", "docvqa", scorers.anls),
    ("ChartQA_TEST", "chartqa", scorers.relaxed_accuracy),
])
def test_open_vqa_runs(files, demo, tmp_path, name, key, metric):
    report = run(name, files[key], demo, tmp_path, num_beams=1)
    questions = {q.id: q for q in datasets.read_tsv(files[key], "vqa")}
    rows = stored(report)
    cot = report.settings.cot_prompt  # ChartQA: short-CoT prompt, scored on the text after 'Answer:'
    expected = [metric(scorers.final_answer(r["prediction"]) if cot else r["prediction"], questions[r["id"]].answers)
                for r in rows]
    assert [r["score"] for r in rows] == pytest.approx(expected)
    assert report.metrics["Overall"] == pytest.approx(100 * sum(expected) / len(expected))
    assert report.table.startswith(f"**{name}_nothink**")


def test_ocrbench_run(files, demo, tmp_path):
    report = run("OCRBench", files["ocrbench"], demo, tmp_path, num_beams=1)
    questions = {q.id: q for q in datasets.read_tsv(files["ocrbench"], "vqa")}
    hits = [(questions[r["id"]].category, scorers.ocrbench_hit(r["prediction"], questions[r["id"]].answers,
                                                                questions[r["id"]].category)) for r in stored(report)]
    assert report.metrics == scorers.ocrbench_summary(hits)
    assert "| Final Score |" in report.table and "| Key Information Extraction |" in report.table


@pytest.mark.parametrize("subtitles", [False, True])
def test_video_run(files, demo, tmp_path, subtitles):
    report = run("Video-MME", files["video"], demo, tmp_path, subtitles=subtitles, num_beams=1)
    rows = stored(report)
    assert [r["id"] for r in rows] == ["1-1", "1-2", "2-1"] and report.errors == 0
    scores = {r["id"]: r["score"] for r in rows}
    assert report.metrics["short"] == pytest.approx(100 * (scores["1-1"] + scores["1-2"]) / 2)
    assert report.metrics["long"] == pytest.approx(100 * scores["2-1"])
    assert report.name == "Video-MME_nothink" + ("_subs" if subtitles else "")
    assert all(r["visual_tokens"] == 6 * 32 for r in rows)  # 6 frames, packing 1, 32 demo queries each


def test_video_prompt_carries_the_subtitles_of_the_sampled_frames(files):
    questions = datasets.read_video_questions(files["video"])
    settings = official_settings(resolve_benchmark("VideoMME"), subtitles=True)
    content = VideoQaRunner().content(questions[0], settings, row_rng(0, questions[0].id))
    text = content[-1]
    assert "This video's subtitles are listed below: \nfirst words\nsecond words\n" in text
    assert "after the end" not in text and "<font" not in text
    plain = VideoQaRunner().content(questions[0], official_settings(resolve_benchmark("VideoMME")), row_rng(0, "x"))
    assert "subtitles" not in plain[-1] and plain[-1].endswith("The best answer is:")


# ---- resume, limit, errors -----------------------------------------------------------------------------------

def test_resume_generates_nothing_twice_and_limit_extends(files, demo, tmp_path, monkeypatch):
    first = run("AI2D", files["mcq"], demo, tmp_path, limit=2, num_beams=1)
    assert first.rows == 2 and first.generated == 2 and len(stored(first)) == 2

    from minicpmv.inference.engine import Engine
    calls = []
    original = Engine.generate
    monkeypatch.setattr(Engine, "generate", lambda self, reqs: calls.append(len(reqs)) or original(self, reqs))
    again = run("AI2D", files["mcq"], demo, tmp_path, limit=2, num_beams=1)
    assert again.generated == 0 and calls == [] and len(stored(again)) == 2
    assert again.metrics == first.metrics

    more = run("AI2D", files["mcq"], demo, tmp_path, num_beams=1)  # no limit: only the third row is new
    assert more.generated == 1 and calls == [1] and more.rows == 3 and len(stored(more)) == 3


def test_resume_refuses_other_settings_and_drops_a_cut_line(files, demo, tmp_path):
    first = run("AI2D", files["mcq"], demo, tmp_path, limit=1, num_beams=1)
    with pytest.raises(InputError, match="other settings"):
        run("AI2D", files["mcq"], demo, tmp_path, limit=1, num_beams=1, max_new_tokens=TOKENS + 1)
    with first.results_path.open("a") as f:
        f.write('{"id": "1", "predic')  # a crash in the middle of a write
    assert list(read_results(first.results_path)) == ["0"]
    assert first.results_path.read_text().count("\n") == 1
    resumed = run("AI2D", files["mcq"], demo, tmp_path, limit=2, num_beams=1)
    assert resumed.generated == 1 and [r["id"] for r in stored(resumed)] == ["0", "1"]


def test_a_row_that_cannot_run_is_recorded_as_an_error(demo, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    data = tmp_path / "q.json"
    data.write_text(json.dumps([{"question_id": "x", "video": "broken.mp4", "question": "?", "options": ["a", "b"],
                                 "answer": "A"}]))
    report = run("VideoMME", data, demo, tmp_path / "out")
    (row,) = stored(report)
    assert row["error"] and "broken.mp4" in row["error"] and row["score"] == 0.0
    assert report.errors == 1 and "| errors | 1 |" in report.table


def test_cli_bench(files, demo, tmp_path, capsys, monkeypatch):
    import minicpmv.api
    from minicpmv.cli import main

    monkeypatch.setattr(minicpmv.api, "load", lambda path=None, **kw: demo)  # the model loaded once for this module
    rc = main(["eval", "bench", "--benchmark", "AI2D", "--data", str(files["mcq"]), "--out", str(tmp_path),
               "--limit", "1", "--max-new-tokens", "2", "--num-beams", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.startswith("**AI2D_nothink**") and "| Overall |" in out
    rc = main(["eval", "bench", "--benchmark", "Nope", "--data", str(files["mcq"]), "--out", str(tmp_path)])
    assert rc == 2 and "unknown benchmark 'Nope'" in capsys.readouterr().err


# ---- readers ---------------------------------------------------------------------------------------------------

def test_read_tsv_images_options_answers(tmp_path):
    png = drawing(RED)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png)
    path = write_tsv(tmp_path / "t.tsv", ["index", "image", "image_path", "question", "A", "B", "C", "answer", "split"], [
        ["10", b64(png), "", "Q1", "x", "y", "", "B", "dev"],
        ["11", "10", "", "Q2", "x", "y", "z", "C", "dev"],
        ["12", str([b64(png), b64(png)]), "", "Q3", "x", "y", "", "A", "dev"],
        ["13", "", "img/a.png", "Q4", "x", "y", "", "A", "dev"],
    ])
    q = datasets.read_tsv(path, "mcq")
    assert [x.id for x in q] == ["10", "11", "12", "13"]
    assert q[0].options == {"A": "x", "B": "y"} and q[1].options == {"A": "x", "B": "y", "C": "z"}
    assert q[0].images == (png,) and q[1].images == (png,) and len(q[2].images) == 2
    assert q[3].images == (tmp_path / "img" / "a.png",) and q[0].fields == {"split": "dev"} and q[0].line == 2
    assert datasets.load_images(q[3])[0].size == (96, 64)
    vqa = datasets.read_tsv(write_tsv(tmp_path / "v.tsv", ["index", "image", "question", "answer"],
                                      [["0", b64(png), "Q", "['a', 'b']"], ["1", b64(png), "Q", "[not a list"]]), "vqa")
    assert vqa[0].answers == ("a", "b") and vqa[1].answers == ("[not a list",)


@pytest.mark.parametrize("header, row, message", [
    (["index", "image", "question"], ["0", "x", "Q"], "missing column\\(s\\) answer"),
    (["index", "question", "answer"], ["0", "Q", "A"], "image \\(or image_path\\)"),
    (["index", "image", "question", "A", "B", "answer"], ["0", "!!!" * 30, "Q", "x", "y", "A"], "line 2 \\(index 0\\), column 'image'.*base64"),
    (["index", "image", "question", "A", "B", "answer"], ["0", b64(b"not an image" * 10), "Q", "x", "y", "A"], "not an image"),
    (["index", "image", "question", "A", "B", "answer"], ["0", "99", "Q", "x", "y", "A"], "neither base64 image data nor the index"),
    (["index", "image", "question", "A", "B", "answer"], ["0", "PNG", "Q", "x", "y", "E"], "not one of the option letters A, B"),
    (["index", "image", "question", "A", "answer"], ["0", "PNG", "Q", "x", "A"], "at least two options"),
    (["index", "image", "question", "A", "B", "answer"], ["", "PNG", "Q", "x", "y", "A"], "column 'index' is empty"),
    (["index", "image", "question", "A", "B", "answer"], ["0", "PNG", "Q", "x", "y", ""], "column 'answer' is empty"),
    (["index", "image_path", "question", "A", "B", "answer"], ["0", "nope.png", "Q", "x", "y", "A"], "'image_path' names"),
])
def test_read_tsv_errors_name_row_and_column(tmp_path, header, row, message):
    row = [b64(drawing(RED)) if v == "PNG" else v for v in row]
    with pytest.raises(InputError, match=message):
        datasets.read_tsv(write_tsv(tmp_path / "bad.tsv", header, [row]), "mcq")


def test_read_tsv_file_level_errors(tmp_path):
    with pytest.raises(InputError, match="no such benchmark file"):
        datasets.read_tsv(tmp_path / "none.tsv", "mcq")
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\timage\tquestion\tanswer\n0\tx\tQ\n")
    with pytest.raises(InputError, match="line 2: 3 fields but the header has 4"):
        datasets.read_tsv(bad, "vqa")
    png = b64(drawing(RED))
    with pytest.raises(InputError, match="index '0' repeats the row at line 2"):
        datasets.read_tsv(write_tsv(tmp_path / "d.tsv", ["index", "image", "question", "answer"],
                                    [["0", png, "Q", "a"], ["0", png, "Q", "b"]]), "vqa")


def test_hallusion_keys():
    q = datasets.ImageQuestion("VD_math_0_1_2_0", "Q", (), {}, ("Yes",))
    assert hallusion_keys(q) == ("1", "2", "0")
    q = datasets.ImageQuestion("7", "Q", (), {}, ("Yes",), fields={"set_id": "3", "figure_id": "1", "question_id": "0"})
    assert hallusion_keys(q) == ("3", "1", "0")
    with pytest.raises(InputError, match="set_id, figure_id, question_id"):
        hallusion_keys(datasets.ImageQuestion("7", "Q", (), {}, ("Yes",)))


def test_video_questions_reader(files, tmp_path):
    q = datasets.read_video_questions(files["video"])
    assert q[0].video.name == "clip.mp4" and q[0].subtitle.name == "clip.srt"
    assert q[0].options == {"A": "Nothing.", "B": "A bar code.", "C": "A car.", "D": "A dog."}
    assert q[0].duration == "short" and q[0].fields == {"task_type": "OCR"}
    assert q[2].options == {"A": "About a second.", "B": "An hour."} and q[2].subtitle is None
    plain = tmp_path / "p.json"
    plain.write_text(json.dumps([{"question_id": "1", "video": str(q[0].video), "question": "?",
                                  "options": ["left", "right"], "answer": "B"}]))
    (p,) = datasets.read_video_questions(plain)
    assert p.options == {"A": "left", "B": "right"} and p.duration == "unspecified"


@pytest.mark.parametrize("item, message", [
    ({"videoID": "clip", "question": "?", "options": ["A. x", "B. y"], "answer": "A"}, "'question_id' is missing"),
    ({"question_id": "1", "videoID": "nope", "question": "?", "options": ["A. x", "B. y"], "answer": "A"}, "no video file for videoID 'nope'"),
    ({"question_id": "1", "question": "?", "options": ["A. x", "B. y"], "answer": "A"}, "'video' \\(a path\\) or 'videoID'"),
    ({"question_id": "1", "videoID": "clip", "question": "?", "options": ["A. x", "y"], "answer": "A"}, "field 'options'"),
    ({"question_id": "1", "videoID": "clip", "question": "?", "options": ["A. x", "B. y"], "answer": "C"}, "not one of the option letters A, B"),
])
def test_video_questions_errors(files, item, message):
    path = files["video"].parent / "bad.jsonl"
    path.write_text(json.dumps(item) + "\n")
    with pytest.raises(InputError, match=f"bad.jsonl: line 1: .*{message}"):
        datasets.read_video_questions(path)


def test_video_questions_file_errors(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1}\n{oops\n')
    with pytest.raises(InputError, match="line 2 is not valid JSON"):
        datasets.read_video_questions(path)
    path = tmp_path / "q.json"
    path.write_text('{"question_id": 1}')
    with pytest.raises(InputError, match="expected a list of question objects"):
        datasets.read_video_questions(path)


def test_srt_parsing_and_frame_subtitles():
    cues = datasets.parse_srt("1\r\n00:00:01,500 --> 00:00:03,000\r\n<font color=\"white\">Hello</font>\r\nthere\r\n\r\n"
                              "2\n00:01:00.25 --> 01:00:00,000\nlater\n")
    assert cues == [datasets.Subtitle(1.5, 3.0, "Hello there"), datasets.Subtitle(60.25, 3600.0, "later")]
    abc = [datasets.Subtitle(0, 2, "a"), datasets.Subtitle(2, 4, "b"), datasets.Subtitle(4, 6, "c")]
    assert datasets.subtitles_at(abc, [0.5, 1.5, 4.2]) == ["a", "c"]
    assert datasets.subtitles_at(abc, [2.0]) == ["b"]
    with pytest.raises(InputError, match="cue 1: bad time"):
        datasets.parse_srt("1\nsoon --> later\nhi\n", "x.srt")


def test_an_empty_file_is_refused(demo, tmp_path):
    empty = write_tsv(tmp_path / "e.tsv", ["index", "image", "question", "answer"], [])
    with pytest.raises(InputError, match="holds no questions"):
        run("VQA", empty, demo, tmp_path / "out")
