"""A contact sheet of engine output, so a person can see what the engine makes.

One row per sample: the corrupted page (scaled down) with each target outlined in its level's
colour and numbered as in the prompt, then the targets at full resolution, each labelled with its
number, level and true text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw

from minicpmv.data.documents.sources import find_fonts, load_font

LEVEL_COLOURS = {"low": (40, 170, 60), "moderate": (240, 150, 0), "high": (220, 30, 30)}
PAGE_HEIGHT = 640  # height of each page thumbnail
CROPS_WIDTH = 760  # width of the column of target crops


def contact_sheet(samples: Sequence[tuple[Image.Image, dict[str, Any]]], title: str = "") -> Image.Image:
    """(corrupted page, record) pairs -> one RGB sheet with a legend on top."""
    font = load_font(_sans(), 16)
    rows = [_row(image, record, font) for image, record in samples]
    width = max([r.width for r in rows] + [900])
    legend_h = 36
    sheet = Image.new("RGB", (width, legend_h + sum(r.height for r in rows)), "white")
    draw = ImageDraw.Draw(sheet)
    x = 10
    if title:
        draw.text((x, 9), title, fill="black", font=font)
        x += int(draw.textlength(title, font=font)) + 24
    for level, colour in LEVEL_COLOURS.items():
        draw.rectangle([x, 10, x + 18, 28], outline=colour, width=4)
        draw.text((x + 26, 9), level, fill="black", font=font)
        x += 40 + int(draw.textlength(level, font=font)) + 16
    y = legend_h
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height
    return sheet


def _row(page: Image.Image, record: dict[str, Any], font) -> Image.Image:
    scale = PAGE_HEIGHT / page.height
    thumb = page.resize((max(1, round(page.width * scale)), PAGE_HEIGHT), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(thumb)
    targets = record["document"]["targets"]
    for i, t in enumerate(targets):
        x1, y1, x2, y2 = (round(v * scale) for v in t["box"])
        colour = LEVEL_COLOURS[t["level"]]
        draw.rectangle([x1 - 3, y1 - 3, x2 + 3, y2 + 3], outline=colour, width=3)
        draw.text((max(0, x1 - 18), max(0, y1 - 4)), str(i + 1), fill=colour, font=font)
    crops = _crops(page, targets, font, record)
    row = Image.new("RGB", (thumb.width + 20 + crops.width, max(thumb.height, crops.height) + 16), (235, 235, 235))
    row.paste(thumb, (0, 8))
    row.paste(crops, (thumb.width + 20, 8))
    return row


def _crops(page: Image.Image, targets: Sequence[dict[str, Any]], font, record: dict[str, Any]) -> Image.Image:
    """Targets at full resolution (cut to CROPS_WIDTH), each under a label "i. level: text"."""
    panel = Image.new("RGB", (CROPS_WIDTH, PAGE_HEIGHT), "white")
    draw = ImageDraw.Draw(panel)
    draw.text((6, 4), f"{record['id']}  ({record['document']['task']})", fill="black", font=font)
    y = 28
    for i, t in enumerate(targets):
        x1, y1, x2, y2 = t["box"]
        crop = page.crop((x1 - 3, y1 - 3, min(x2 + 3, x1 - 3 + CROPS_WIDTH - 12), min(y2 + 3, y1 + 200)))
        label = f"{i + 1}. {t['level']}: {t['text']}"
        if y + 22 + crop.height > PAGE_HEIGHT:
            draw.text((6, y), f"... {len(targets) - i} more", fill="black", font=font)
            break
        draw.text((6, y), label[:90] + ("..." if len(label) > 90 else ""), fill=LEVEL_COLOURS[t["level"]], font=font)
        panel.paste(crop, (6, y + 22))
        y += 22 + crop.height + 10
    if not targets:
        draw.text((6, y), "whole-page transcription of the clean page", fill="black", font=font)
    return panel


def _sans() -> str | None:
    fonts = find_fonts()
    return next((f for f in fonts if Path(f).stem.lower() in ("dejavusans", "liberationsans-regular")), fonts[0] if fonts else None)


def preview_file(jsonl: str | Path, out_png: str | Path, n: int = 4) -> Path:
    """Contact sheet of the first `n` samples of an engine output JSONL (images resolved next to it)."""
    import json

    jsonl = Path(jsonl)
    samples = []
    with open(jsonl) as f:
        for line in f:
            if len(samples) == n:
                break
            record = json.loads(line)
            samples.append((Image.open(jsonl.parent / record["image"]).convert("RGB"), record))
    if not samples:
        raise ValueError(f"{jsonl} holds no samples to preview")
    contact_sheet(samples, title=jsonl.name).save(out_png)
    return Path(out_png)
