"""`llavakit data mix`: reproducible weighted mixtures with the documented per-source counts."""

import json
from collections import Counter
from pathlib import Path

import pytest

from llavakit.cli import main
from llavakit.data import check_dataset, mix, parse_source
from llavakit.data.mix import Source


def write_source(path: Path, prefix: str, n: int, *, as_array: bool = False, ids=None) -> Path:
    records = [{"id": (ids[i] if ids else f"{prefix}{i}"), "conversations": [
        {"from": "human", "value": f"{prefix} question {i}"}, {"from": "gpt", "value": f"{prefix} answer {i}"}]}
        for i in range(n)]
    if as_array:
        path.write_text(json.dumps(records))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def sources(tmp_path):
    return (write_source(tmp_path / "conv.json", "c", 40, as_array=True),
            write_source(tmp_path / "vqa.jsonl", "v", 30),
            write_source(tmp_path / "ocr.jsonl", "o", 10))


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def _origin(record_id: str) -> str:
    return record_id.split(":")[-1][0]


def test_weights_counts_and_reproducibility(sources, tmp_path, capsys):
    conv, vqa, ocr = sources
    args = [f"{conv}:0.5", f"{vqa}:1", f"{ocr}:3", "--out"]
    assert main(["data", "mix", *args, str(tmp_path / "a.jsonl"), "--seed", "7"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 80 records" in printed and "(seed 7)" in printed
    assert main(["data", "mix", *args, str(tmp_path / "b.jsonl"), "--seed", "7"]) == 0
    assert main(["data", "mix", *args, str(tmp_path / "c.jsonl"), "--seed", "8"]) == 0
    a, b, c = (_ids(tmp_path / f"{x}.jsonl") for x in "abc")
    assert a == b  # same seed: the same file
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert a != c and Counter(map(_origin, a)) == Counter(map(_origin, c))  # another seed: another order/sample
    # 0.5 of 40 without replacement, all 30 once, the 10 three times (copies get _repN ids).
    assert Counter(map(_origin, a)) == {"c": 20, "v": 30, "o": 30}
    assert len(set(a)) == len(a)
    conv_ids = [i for i in a if i.startswith("c")]
    assert len(set(conv_ids)) == 20
    assert sum(i.endswith("_rep3") for i in a) == 10 and sum(i.endswith("_rep2") for i in a) == 10
    assert [_origin(i) for i in a[:20]] != sorted(_origin(i) for i in a[:20])  # shuffled, not concatenated


def test_total_and_fractional_multiplier(sources, tmp_path):
    conv, vqa, ocr = sources
    counts = mix([Source(conv, 1), Source(vqa, 1), Source(ocr, 2.5)], tmp_path / "m.jsonl", seed=1)
    assert [c.taken for c in counts] == [40, 30, 25] and counts[2].distinct == 10
    ids = _ids(tmp_path / "m.jsonl")
    assert sum(i.endswith("_rep3") for i in ids) == 5  # the half of the third pass
    scaled = mix([Source(conv, 1), Source(vqa, 1), Source(ocr, 2)], tmp_path / "t.json", seed=1, total=50)
    assert [c.taken for c in scaled] == [22, 17, 11] and sum(c.taken for c in scaled) == 50
    assert scaled[2].distinct == 10  # 11 of 10 records: every one once, one of them twice
    assert len(json.loads((tmp_path / "t.json").read_text())) == 50  # .json: a JSON array


def test_colliding_ids_are_prefixed_with_the_source(tmp_path):
    a = write_source(tmp_path / "detail.jsonl", "d", 5, ids=["1", "2", "3", "4", "5"])
    b = write_source(tmp_path / "conversation.jsonl", "c", 3, ids=["4", "5", "6"])
    counts = mix([parse_source(str(a)), parse_source(f"{b}:1")], tmp_path / "m.jsonl", seed=0)
    assert set(_ids(tmp_path / "m.jsonl")) == {"1", "2", "3", "6", "detail:4", "detail:5",
                                                "conversation:4", "conversation:5"}
    assert [c.ids_prefixed for c in counts] == [2, 2]
    assert check_dataset(tmp_path / "m.jsonl").clean


def test_source_specs_and_errors(tmp_path, capsys):
    assert parse_source("data/x.json:0.25").weight == 0.25 and parse_source("x.json").weight == 1.0
    assert parse_source("C:/data/x.json").path == Path("C:/data/x.json")  # a colon that is not a weight
    with pytest.raises(ValueError, match=">= 0"):
        parse_source("x.json:-1")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "conversations": []}\nnot json\n')
    assert main(["data", "mix", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 1
    assert "data check" in capsys.readouterr().err
    assert main(["data", "mix", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o.jsonl")]) == 1
