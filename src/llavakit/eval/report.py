"""The evaluation report: every score in one JSON, a markdown table beside LLaVA-1.5-7B's published
numbers, and a bar chart drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from llavakit.eval.registry import BENCHMARKS

PAPER = "LLaVA-1.5-7B (paper)"


def collect(output: str | Path) -> list[dict[str, Any]]:
    """Every ``<output>/<benchmark>/<split>/scores.json``, in the paper's benchmark order."""
    order = {name: i for i, name in enumerate(BENCHMARKS)}
    records = []
    for path in Path(output).glob("*/*/scores.json"):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(records, key=lambda r: (order.get(r.get("benchmark"), len(order)), str(r.get("split"))))


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.1f}"


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    lines = ["| Benchmark | Split | Metric | llavakit | " + PAPER + " | Questions | Note |",
             "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for r in records:
        scores = r.get("scores", {})
        note = scores.get("status", "")
        if r.get("limit") is not None:
            note = (note + "; " if note else "") + f"--limit {r['limit']}"
        count = scores.get("count", scores.get("answered", ""))
        lines.append(f"| {r.get('title', r.get('benchmark'))} | {r.get('split')} | {r.get('headline_metric')} | "
                     f"{_fmt(r.get('headline'))} | {_fmt(r.get('reported_llava_1_5_7b'))} | {count} | {note} |")
    return "\n".join(lines) + "\n"


def bar_chart(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bars, ours next to the paper's, each as a percentage of the metric's full scale
    (MME's perception score is out of 2000), labelled with the actual numbers."""
    rows = [r for r in records if r.get("reported_llava_1_5_7b") is not None or r.get("headline") is not None]
    group_w, bar_w, height, top, bottom, left = 104, 32, 360, 40, 70, 50
    width = left + max(1, len(rows)) * group_w + 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    plot_h = height - top - bottom
    base = top + plot_h
    for pct in (0, 25, 50, 75, 100):  # grid and axis labels
        y = base - plot_h * pct / 100
        draw.line([(left, y), (width - 10, y)], fill=(225, 225, 225))
        draw.text((8, y - 6), f"{pct}%", fill="black", font=font)
    colours = {"ours": (52, 101, 164), "paper": (170, 170, 170)}
    for i, r in enumerate(rows):
        x0 = left + i * group_w + (group_w - 2 * bar_w - 4) // 2
        scale = float(r.get("scale") or 100.0)
        for j, (kind, value) in enumerate((("paper", r.get("reported_llava_1_5_7b")), ("ours", r.get("headline")))):
            x = x0 + j * (bar_w + 4)
            if value is None:
                draw.text((x + 4, base - 14), "n/a", fill="black", font=font)
                continue
            h = max(0.0, min(1.0, float(value) / scale)) * plot_h
            draw.rectangle([x, base - h, x + bar_w, base], fill=colours[kind])
            draw.text((x, base - h - 12), f"{value:.1f}"[:6], fill="black", font=font)
        label = str(r.get("title", r.get("benchmark")))
        draw.text((left + i * group_w + 4, base + 6), label[:17], fill="black", font=font)
        draw.text((left + i * group_w + 4, base + 20), str(r.get("split"))[:15], fill=(90, 90, 90), font=font)
    draw.rectangle([left, 10, left + 10, 20], fill=colours["ours"])
    draw.text((left + 14, 9), "llavakit", fill="black", font=font)
    draw.rectangle([left + 90, 10, left + 100, 20], fill=colours["paper"])
    draw.text((left + 104, 9), PAPER, fill="black", font=font)
    draw.line([(left, top), (left, base)], fill="black")
    draw.line([(left, base), (width - 10, base)], fill="black")
    path = Path(path)
    image.save(path, format="PNG")
    return path


def write_report(output: str | Path, model: str | None = None) -> dict[str, Path]:
    """report.json, report.md and report.png in `output`, from all scores found there."""
    output = Path(output)
    records = collect(output)
    summary = {
        "model": model,
        "results": records,
        "table": {f"{r['benchmark']}/{r['split']}": {"metric": r.get("headline_metric"), "llavakit": r.get("headline"),
                                                     "paper_llava_1_5_7b": r.get("reported_llava_1_5_7b")}
                  for r in records},
    }
    paths = {"json": output / "report.json", "markdown": output / "report.md", "chart": output / "report.png"}
    paths["json"].write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    title = f"# Evaluation of {model}\n\n" if model else "# Evaluation\n\n"
    paths["markdown"].write_text(title + markdown_table(records) + "\n![scores](report.png)\n", encoding="utf-8")
    bar_chart(records, paths["chart"])
    return paths
