"""LLaVA training data: lazily read JSON / JSONL records, turned into samples by `prepare_sample`.

The file is scanned once into an index of byte offsets (plus a length estimate and an image
count per record, for the samplers); records are parsed again only when a sample is needed and
images are decoded only then. A record that cannot become a sample is skipped with a reason,
never a crash: the trainer counts the reasons and reports them.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llavakit.config import LlavaConfig
from llavakit.conversation import IMAGE_PLACEHOLDER, ChatTemplate, from_llava_conversations
from llavakit.images import ImageError
from llavakit.inputs import Batch, Sample, collate, prepare_sample
from llavakit.tokenize import IGNORE_INDEX, plain_backend

SKIP_REASONS = (
    "bad_record",  # not valid JSON, or not a record with a `conversations` list
    "unknown_role",  # a turn whose `from` is not human / gpt / system
    "bad_conversation",  # roles out of order, or text-only under the stage-1 `plain` template
    "image_tag_mismatch",  # more <image> tags than images (or fewer, but not none)
    "missing_image",
    "unreadable_image",
    "too_long",  # over data.max_length and not safely truncatable
    "no_targets",  # nothing for the model to learn (no assistant text left)
)


class SkipSample(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class RecordIndex:
    offsets: np.ndarray  # int64 byte offset of each record
    sizes: np.ndarray  # int64 byte size
    lengths: np.ndarray  # int32 estimated tokens (images included)
    num_images: np.ndarray  # int16
    bad_lines: list[tuple[int, str]]  # JSONL lines that are not JSON: (line number, error)
    image_names: list[list[str]] | None = None  # per record, when asked for (the feature cache)

    def __len__(self) -> int:
        return len(self.offsets)


def _scan_jsonl(f) -> Iterator[tuple[int, int, Any]]:
    offset = 0
    for number, line in enumerate(f, start=1):
        if line.strip():
            try:
                yield offset, len(line), json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                yield offset, len(line), _BadLine(number, str(err))
        offset += len(line)


class _BadLine:
    def __init__(self, number: int, error: str) -> None:
        self.number, self.error = number, error


def _scan_json_array(f, chunk: int = 1 << 22) -> Iterator[tuple[int, int, Any]]:
    """Records of a top-level JSON array, streamed: never more than a few MB of text in memory."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8-sig")()  # drops a byte-order mark
    bom = f.read(3) == codecs.BOM_UTF8
    f.seek(0)
    buf, pos, byte_pos, eof = "", 0, 3 if bom else 0, False

    def advance(new_pos: int) -> None:
        nonlocal pos, byte_pos
        byte_pos += len(buf[pos:new_pos].encode("utf-8"))
        pos = new_pos

    def refill() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        data = f.read(chunk)
        eof = not data
        buf = buf[pos:] + utf8.decode(data, final=eof)
        pos = 0
        return True

    started = False
    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n,[]":
            if buf[pos] == "[":
                started = True
            if buf[pos] == "]" and started:
                return
            advance(pos + 1)
        if pos >= len(buf):
            if not refill():
                return
            continue
        if not started:
            raise ValueError("a LLaVA JSON file must hold a list of records")
        try:
            record, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as err:
            if refill():
                continue
            raise ValueError(f"invalid JSON near byte {byte_pos}: {err}") from err
        start = byte_pos
        advance(end)
        yield start, byte_pos - start, record


def _record_text(record: dict, plain: bool) -> str:
    turns = record.get("conversations") or []
    parts = [t.get("value", "") for t in turns if isinstance(t, dict) and isinstance(t.get("value"), str)
             and (not plain or t.get("from") == "gpt")]  # plain keeps only the answers' text
    return "\n".join(parts).replace(IMAGE_PLACEHOLDER, "")


def _image_list(record: dict) -> list[str]:
    image = record.get("image")
    if image is None:
        return []
    if isinstance(image, str):
        return [image]
    if isinstance(image, list) and all(isinstance(i, str) for i in image):
        return list(image)
    raise SkipSample("bad_record", f"'image' must be a path or a list of paths, got {image!r}")


def _token_counter(tokenizer) -> Callable[[list[str]], list[int]]:
    """A function of texts: how many tokens each has, without special tokens. With a fast
    tokenizer it counts through one copy of the Rust backend, the same ids as the tokenizer's own
    call without a Python dict per text (half the time of indexing a large file)."""
    backend = plain_backend(tokenizer)
    if backend is None:
        return lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # tokenizers < 0.21: no fast
    return lambda texts: [len(encoding.ids) for encoding in encode(texts, add_special_tokens=False)]


def index_records(path: str | Path, *, tokenizer=None, tokens_per_image: int = 576,
                  plain: bool = False, estimate: str = "tokens", batch: int = 2048,
                  collect_images: bool = False) -> RecordIndex:
    """One pass over the file: offsets, sizes, length estimates and image counts."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        is_array = head.removeprefix(codecs.BOM_UTF8).lstrip()[:1] == b"["
        scan = _scan_json_array(f) if is_array else _scan_jsonl(f)
        offsets, sizes, n_images, texts, overheads, bad = [], [], [], [], [], []
        names: list[list[str]] = []
        for offset, size, record in scan:
            if isinstance(record, _BadLine):
                bad.append((record.number, record.error))
                continue
            offsets.append(offset)
            sizes.append(size)
            images: list[str] = []
            if isinstance(record, dict):
                with contextlib.suppress(SkipSample):  # a bad 'image' field is reported when loaded
                    images = _image_list(record)
                text = _record_text(record, plain)
            else:
                text = ""
            n_images.append(len(images))
            if collect_images:
                names.append(images)
            turns = record.get("conversations") if isinstance(record, dict) else None
            overhead = 6 * len(turns) if isinstance(turns, list) else 0  # role markers, separators
            texts.append(text)
            overheads.append(overhead)
    lengths = np.zeros(len(offsets), dtype=np.int64)
    count_tokens = _token_counter(tokenizer) if estimate == "tokens" and tokenizer is not None else None
    for start in range(0, len(texts), batch):
        chunk = texts[start:start + batch]
        counts = count_tokens(chunk) if count_tokens else [len(t.split()) for t in chunk]
        lengths[start:start + len(chunk)] = counts
    lengths += np.asarray(overheads, dtype=np.int64) + np.asarray(n_images, dtype=np.int64) * tokens_per_image
    return RecordIndex(np.asarray(offsets, dtype=np.int64), np.asarray(sizes, dtype=np.int64),
                       lengths.astype(np.int32), np.asarray(n_images, dtype=np.int16), bad,
                       names if collect_images else None)


@dataclass
class Item:
    index: int
    sample: Sample | None
    reason: str | None = None
    detail: str = ""
    truncated: bool = False


class LlavaDataset(torch.utils.data.Dataset):
    """Samples built on demand; `__getitem__` returns an Item (with a skip reason on failure)."""

    def __init__(self, path: str | Path, *, config: LlavaConfig, template: ChatTemplate, tokenizer,
                 image_processor, image_folder: str | Path | None = None, max_length: int = 2048,
                 overlong: str = "truncate", length_estimate: str = "tokens", features=None,
                 collect_images: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no data file {self.path}")
        self.config, self.template, self.tokenizer = config, template, tokenizer
        self.image_processor = image_processor
        self.image_folder = Path(image_folder) if image_folder else self.path.parent
        self.max_length, self.overlong = max_length, overlong
        self.features = features  # a FeatureCache: tower features instead of pixels
        self.index = index_records(self.path, tokenizer=tokenizer, tokens_per_image=config.tokens_per_image,
                                   plain=template.style == "plain", estimate=length_estimate,
                                   collect_images=collect_images)

    def all_image_paths(self) -> list[str]:
        """Every image the file names (needs collect_images=True)."""
        if self.index.image_names is None:
            raise ValueError("the dataset was indexed without collect_images=True")
        return [str(self.image_folder / n) for names in self.index.image_names for n in names]

    def __len__(self) -> int:
        return len(self.index)

    def record(self, i: int) -> dict:
        with open(self.path, "rb") as f:
            f.seek(int(self.index.offsets[i]))
            raw = f.read(int(self.index.sizes[i]))
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SkipSample("bad_record", f"invalid JSON: {err}") from None
        if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
            raise SkipSample("bad_record", "expected an object with a 'conversations' list")
        return record

    def image_paths(self, i: int) -> list[Path]:
        return [self.image_folder / name for name in _image_list(self.record(i))]

    def __getitem__(self, i: int) -> Item:
        try:
            sample, truncated = self._sample(int(i))
        except SkipSample as skip:
            return Item(int(i), None, skip.reason, skip.detail)
        return Item(int(i), sample, truncated=truncated)

    def _sample(self, i: int) -> tuple[Sample, bool]:
        record = self.record(i)
        images = [self.image_folder / name for name in _image_list(record)]
        try:
            messages = from_llava_conversations(record["conversations"])
        except ValueError as err:
            reason = "unknown_role" if "unknown speaker" in str(err) else "bad_record"
            raise SkipSample(reason, f"record {record.get('id', i)}: {err}") from None
        tags = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages)
        if tags > len(images) or (0 < tags < len(images)):
            raise SkipSample("image_tag_mismatch", f"record {record.get('id', i)}: {tags} <image> tags, "
                                                   f"{len(images)} images")
        for image in images:
            if self.features is None and not os.path.isfile(image):
                raise SkipSample("missing_image", str(image))
        processor = self.image_processor if self.features is None else self.features
        try:
            sample = prepare_sample(messages, images, config=self.config, template=self.template,
                                    tokenizer=self.tokenizer, image_processor=processor,
                                    add_generation_prompt=False, with_labels=True)
        except FileNotFoundError as err:
            raise SkipSample("missing_image", str(err)) from None
        except ImageError as err:
            raise SkipSample("unreadable_image", str(err)) from None
        except ValueError as err:
            raise SkipSample("bad_conversation", f"record {record.get('id', i)}: {err}") from None
        truncated = False
        if len(sample.input_ids) > self.max_length:
            sample, truncated = self._truncate(sample, record.get("id", i)), True
        if all(label == IGNORE_INDEX for label in sample.labels[1:]):
            raise SkipSample("no_targets", f"record {record.get('id', i)}: no assistant tokens to train on")
        return sample, truncated

    def _truncate(self, sample: Sample, record_id: Any) -> Sample:
        n, limit = len(sample.input_ids), self.max_length
        slots = [p for p, t in enumerate(sample.input_ids) if t == self.config.image_token_id]
        if self.overlong == "skip" or (slots and slots[-1] >= limit):
            raise SkipSample("too_long", f"record {record_id}: {n} tokens > max_length {limit}"
                                         + (" (the cut would split an image)" if slots and slots[-1] >= limit else ""))
        return Sample(sample.input_ids[:limit], sample.labels[:limit], sample.pixel_values, sample.prompt)


@dataclass
class TrainBatch:
    """A micro-batch: the padded tensors (None when every sample was skipped) and the skips."""

    batch: Batch | None
    items: list[tuple[int, str | None, str, bool]]  # (record index, skip reason, detail, truncated)
    real_tokens: int = 0
    padded_tokens: int = 0


class Collator:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[Item]) -> TrainBatch:
        samples = [it.sample for it in items if it.sample is not None]
        meta = [(it.index, it.reason, it.detail, it.truncated) for it in items]
        if not samples:
            return TrainBatch(None, meta)
        batch = collate(samples, self.pad_id, padding_side="right")
        real = int(batch.attention_mask.sum())
        return TrainBatch(batch, meta, real, batch.attention_mask.numel() - real)
