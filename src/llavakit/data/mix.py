"""Weighted, reproducible mixing of LLaVA datasets (how LLaVA-1.5's 665K mixture was put together).

Each source is ``PATH[:WEIGHT]`` (weight 1 when left out).  A source with N records contributes
``round(WEIGHT * N)`` records:

* ``WEIGHT <= 1``: a random subset of that size, drawn without replacement (1 = every record once);
* ``WEIGHT > 1``: every record ``floor(WEIGHT)`` times, plus a subset without replacement for the
  fractional part (so 3 = three copies, 2.5 = two copies and half the records once more).  Extra
  copies get the id suffix ``_rep2``, ``_rep3``, ...; their content is duplicated on purpose (and
  `llavakit data check` reports it as duplicate_content).

With ``total``, those per-source counts are scaled (largest remainder) to sum to exactly ``total``
and then drawn the same way.  Records keep their content; an id found in more than one source is
prefixed with the source's name (``<file stem>:<id>``) in every source that has it, so each id
stays unique and says where it came from.  Sampling and the final shuffle use one
``random.Random(seed)``: same sources, weights and seed, same file.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from llavakit.data.records import load_records, write_records


@dataclass
class Source:
    path: Path
    weight: float = 1.0
    name: str = ""


@dataclass
class SourceCount:
    name: str
    path: str
    available: int
    weight: float
    taken: int  # records in the mix from this source, copies included
    distinct: int  # distinct records among them
    ids_prefixed: int


def parse_source(spec: str) -> Source:
    """``PATH[:WEIGHT]``; the last colon separates the weight only when what follows is a number."""
    path, sep, tail = spec.rpartition(":")
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            path, weight = spec, 1.0
    else:
        path, weight = spec, 1.0
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"{spec}: the weight must be a number >= 0")
    return Source(Path(path), weight)


def _name_sources(sources: list[Source]) -> None:
    used: Counter = Counter()
    for s in sources:
        base = s.name or s.path.stem
        used[base] += 1
        s.name = base if used[base] == 1 else f"{base}_{used[base]}"


def _scale(wanted: list[int], total: int) -> list[int]:
    """Largest-remainder scaling of `wanted` so the parts sum to `total`."""
    whole = sum(wanted)
    if whole == 0:
        raise ValueError("--total needs at least one source with a positive weight and records")
    exact = [w * total / whole for w in wanted]
    counts = [math.floor(e) for e in exact]
    for i in sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)[:total - sum(counts)]:
        counts[i] += 1
    return counts


def _draw(n: int, count: int, rng: random.Random) -> list[tuple[int, int]]:
    """(record index, copy number from 1) pairs: full passes, then a sample without replacement."""
    if n == 0 or count == 0:
        return []
    passes, rest = divmod(count, n)
    picks = [(i, p + 1) for p in range(passes) for i in range(n)]
    return picks + [(i, passes + 1) for i in sorted(rng.sample(range(n), rest))]


def mix(sources: list[Source], out: str | Path, *, seed: int = 0,
        total: int | None = None) -> list[SourceCount]:
    """Write the shuffled mixture to `out` (JSONL, or a JSON array for ``.json``); per-source counts."""
    if not sources:
        raise ValueError("give at least one source")
    _name_sources(sources)
    data = [load_records(s.path) for s in sources]
    wanted = [round(s.weight * len(records)) for s, records in zip(sources, data)]
    counts = _scale(wanted, total) if total is not None else wanted
    # Ids present in more than one source get the source's name in front, in every such source.
    owners: dict[str, set[int]] = {}
    for k, records in enumerate(data):
        for r in records:
            if r.get("id") is not None:
                owners.setdefault(str(r["id"]), set()).add(k)
    colliding = {rid for rid, ks in owners.items() if len(ks) > 1}
    rng = random.Random(seed)
    mixed, report = [], []
    for k, (source, records) in enumerate(zip(sources, data)):
        picks = _draw(len(records), counts[k], rng)
        prefixed = 0
        for i, copy in picks:
            record = dict(records[i])
            # A record without an id gets one from its source and position (reproducible).
            rid = str(record["id"]) if record.get("id") is not None else f"{source.name}:{i}"
            if rid in colliding:
                rid, prefixed = f"{source.name}:{rid}", prefixed + (copy == 1)
            record["id"] = rid if copy == 1 else f"{rid}_rep{copy}"
            mixed.append(record)
        report.append(SourceCount(source.name, str(source.path), len(records), source.weight, len(picks),
                                  len({i for i, _ in picks}), prefixed))
    rng.shuffle(mixed)
    write_records(out, mixed)
    return report


def summary(counts: list[SourceCount], out: str | Path, seed: int) -> str:
    total = sum(c.taken for c in counts)
    lines = [f"{'source':24} {'records':>9} {'weight':>7} {'taken':>9} {'distinct':>9} {'share':>7} {'ids prefixed':>12}"]
    for c in counts:
        share = 100 * c.taken / total if total else 0.0
        lines.append(f"{c.name[:24]:24} {c.available:>9} {c.weight:>7g} {c.taken:>9} {c.distinct:>9} "
                     f"{share:>6.1f}% {c.ids_prefixed:>12}")
    lines.append(f"wrote {total} records to {out} (seed {seed})")
    return "\n".join(lines)
