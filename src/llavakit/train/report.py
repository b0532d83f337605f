"""The run's record: a JSONL log, a loss curve drawn with Pillow, the end-of-run report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw


class JsonlLog:
    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        """On resume: drop what a killed run logged after its last checkpoint."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            record = json.loads(line) if line.strip() else None
            if record is not None and (record.get("event") != "step" or record["step"] <= step):
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def losses(self) -> list[tuple[int, float]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            if record.get("event") == "step" and record.get("loss") is not None:
                out.append((record["step"], record["loss"]))
        return out


def plot_loss(points: list[tuple[int, float]], path: Path, title: str = "training loss",
              size: tuple[int, int] = (800, 480)) -> None:
    """A line plot PNG (matplotlib is not a dependency): axes, ticks, the curve and a smoothed one."""
    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 70, w - 20, 40, h - 50
    draw.text((left, 12), title, fill="black")
    draw.rectangle((left, top, right, bottom), outline="black")
    points = [(s, v) for s, v in points if math.isfinite(v)]
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x0, x1 = min(xs), max(max(xs), min(xs) + 1)
        y0, y1 = min(ys), max(ys)
        if y1 - y0 < 1e-9:
            y0, y1 = y0 - 0.5, y1 + 0.5

        def to_px(x: float, y: float) -> tuple[float, float]:
            return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top))

        for i in range(5):  # ticks and grid lines
            fy = y0 + (y1 - y0) * i / 4
            _, py = to_px(x0, fy)
            draw.line((left, py, right, py), fill=(225, 225, 225))
            draw.text((5, py - 6), f"{fy:.3g}", fill="black")
            fx = x0 + (x1 - x0) * i / 4
            px, _ = to_px(fx, y0)
            draw.text((px - 10, bottom + 8), f"{fx:.0f}", fill="black")
        draw.text(((left + right) // 2 - 15, h - 22), "step", fill="black")
        if len(points) > 1:
            draw.line([to_px(x, y) for x, y in points], fill=(120, 160, 230), width=1)
            alpha, smooth, avg = 0.9 if len(points) > 50 else 0.0, [], ys[0]
            for y in ys:
                avg = alpha * avg + (1 - alpha) * y
                smooth.append(avg)
            draw.line([to_px(x, y) for x, y in zip(xs, smooth)], fill=(200, 40, 40), width=2)
        else:
            px, py = to_px(xs[0], ys[0])
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=(200, 40, 40))
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp)
    tmp.replace(path)


def format_report(summary: dict[str, Any]) -> str:
    lines = [
        f"steps: {summary['steps']}  final loss: {summary['final_loss']}  time: {summary['seconds']:.1f} s",
        f"tokens/s: {summary['tokens_per_second']:.0f}  padded tokens: {100 * summary['padding_fraction']:.1f} %",
        f"records: {summary['records']}  skipped: {summary['skipped_total']}  truncated: {summary['truncated']}",
    ]
    for reason, count in sorted(summary["skipped"].items()):
        example = summary.get("skip_examples", {}).get(reason, "")
        lines.append(f"  skipped {reason}: {count}" + (f"  (e.g. {example})" if example else ""))
    lines.append(f"output: {summary['output']}")
    return "\n".join(lines)
