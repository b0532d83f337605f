"""Write the world to disk: PNG images, annotations, and text data in LLaVA's JSON formats.

Layout of `out_dir` (the image folder for every "image" field is `out_dir/images`):

    images/train/000000.png ...    training images
    images/bench/000000.png ...    held-out benchmark images (another random stream, no shared scene)
    scenes_train.json, scenes_bench.json   annotations: [{"id", "image", "objects": [...], ...}]
    captions.json      stage-1 alignment data (LLaVA pretraining format, one record per image)
    instruct.json      stage-2 instruction data (LLaVA-Instruct format, several records per image)
    lookups.json       stage-2 drills of lookups and presence (same format; images of 2+ objects)
    bench.jsonl        benchmark questions, one JSON object a line
    meta.json          seed, counts, image size and the world's vocabulary
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from llavakit.config import CLIP_MEAN, CLIP_STD
from llavakit.world.language import (
    CAPTION_REQUESTS,
    DETAIL_REQUESTS,
    caption,
    detailed_description,
    object_listing,
)
from llavakit.world.questions import (
    MC_SUFFIX,
    QA,
    REASONING,
    SHORT_SUFFIX,
    SIMPLE,
    ask_about,
    ask_by_place,
    ask_count,
    ask_presence,
    multiple_choice,
    pick,
    sample_question,
)
from llavakit.world.scenes import COLOURS, POSITIONS, SHAPES, SIZES, Scene, render, sample_scene, scene_rng

TRAIN, BENCH = 0, 1  # split codes, part of every random stream's key
WORLD_VERSION = 5  # 2: the grounding style (list); 3: fewer long-answer records (STYLE_SHARE); 4: place.json; 5: lookups.json
# Records of lookups.json per training image of two or more objects: with three per image beside
# instruct.json, stage 2 learnt the lookups by place and presence (docs/embedded-model.md,
# "Lookups by place, learnt" and "A copy path from the start").
LOOKUP_RECORDS_PER_IMAGE = 3

# The share of images that get a record of each style (the others always get one). Stage 2 is
# bounded by CPU time, and the long-answer styles cost many tokens per answer the benchmark
# asks about: with these shares the same 1 200 steps gave shape on multi-object images 49 %
# instead of 20 % (docs/embedded-model-history.md, "The data mix").
STYLE_SHARE = {"conv": 0.5, "detail": 0.25, "reason": 0.25, "mc": 0.25}
IMAGE_DIR = "images"


@dataclass(frozen=True)
class WorldFiles:
    """Paths of a written world."""

    root: Path

    @property
    def image_folder(self) -> Path:
        return self.root / IMAGE_DIR

    @property
    def captions(self) -> Path:
        return self.root / "captions.json"

    @property
    def instruct(self) -> Path:
        return self.root / "instruct.json"

    @property
    def lookups(self) -> Path:
        return self.root / "lookups.json"

    @property
    def bench(self) -> Path:
        return self.root / "bench.jsonl"

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    def scenes(self, split: str) -> Path:
        """Annotations of "train" or "bench"."""
        return self.root / f"scenes_{split}.json"


def text_rng(seed: int, split: int, index: int, stream: int = 1) -> np.random.Generator:
    """The stream for an image's text, separate from its scene's so changing text keeps pixels;
    another `stream` gives text that leaves the other streams' draws (and files) as they were."""
    return np.random.default_rng([seed, split, index, 0, stream])


def generate_scenes(seed: int, n_train: int, n_bench: int, image_size: int = 96) -> tuple[list[Scene], list[Scene]]:
    """Training and benchmark scenes. A benchmark scene with two or more objects never repeats a
    training scene's symbolic content (shapes, colours, sizes and cells); one-object scenes can,
    as there are only 540 of them."""
    train = [sample_scene(scene_rng(seed, TRAIN, i), image_size) for i in range(n_train)]
    seen = {s.signature for s in train}
    bench = []
    for i in range(n_bench):
        attempt = 0
        scene = sample_scene(scene_rng(seed, BENCH, i), image_size)
        while len(scene.objects) > 1 and scene.signature in seen:
            attempt += 1
            scene = sample_scene(scene_rng(seed, BENCH, i, attempt), image_size)
        bench.append(scene)
    return train, bench


def _turns(pairs: list[tuple[str, str]], rng: np.random.Generator, image_first: bool = True) -> list[dict[str, str]]:
    """LLaVA turns from (question, answer) pairs; the image goes with the first question."""
    turns = []
    for k, (q, a) in enumerate(pairs):
        if k == 0:
            q = f"<image>\n{q}" if image_first or rng.random() < 0.7 else f"{q}\n<image>"
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return turns


def _distinct(qas: list[QA | None]) -> list[QA]:
    seen, out = set(), []
    for qa in qas:
        if qa is not None and qa.question not in seen:
            seen.add(qa.question)
            out.append(qa)
    return out


def caption_record(scene: Scene, rng: np.random.Generator, image: str, rid: str) -> dict[str, Any]:
    """Stage-1 data: a caption request with the image, answered by a caption naming every object."""
    request = CAPTION_REQUESTS[int(rng.integers(len(CAPTION_REQUESTS)))]
    return {"id": rid, "image": image, "conversations": [
        {"from": "human", "value": f"<image>\n{request}"}, {"from": "gpt", "value": caption(scene, rng)}]}


def instruct_records(scene: Scene, rng: np.random.Generator, image: str, rid: str) -> list[dict[str, Any]]:
    """The instruction records of one image; the style is the id's suffix.

    conv: 2-4 questions answered in sentences; detail / reason (one or the other): a long
    description or 1-2 questions needing a short justification; short: 3-5 VQA-style questions;
    mc: 1-2 multiple-choice questions; yesno: one present and one absent object, POPE style;
    list: every object as "shape colour" or "colour shape" (grounding). A style is kept for a
    `STYLE_SHARE` of the images; those draws come last, so every kept record is the one world
    version 2 wrote, and the list record's draws come after the others', as in version 2.
    """
    records: list[tuple[str, dict[str, Any]]] = []  # (style, record)

    def add(style: str, pairs: list[tuple[str, str]], image_first: bool = True) -> None:
        if pairs:
            records.append((style, {"id": f"{rid}-{style}", "image": image,
                                    "conversations": _turns(pairs, rng, image_first)}))

    simple = list(SIMPLE.values())
    conv = _distinct([sample_question(simple, scene, rng) for _ in range(int(rng.integers(2, 5)))])
    if rng.random() < 0.25:
        conv += _distinct([sample_question(REASONING, scene, rng)])
    add("conv", [(qa.question, qa.long) for qa in conv], image_first=False)
    if rng.random() < 0.5:
        add("detail", [(DETAIL_REQUESTS[int(rng.integers(len(DETAIL_REQUESTS)))],
                        detailed_description(scene, rng))], image_first=False)
    else:
        reason = _distinct([sample_question(REASONING, scene, rng) for _ in range(int(rng.integers(1, 3)))])
        add("reason", [(qa.question, qa.long) for qa in reason], image_first=False)
    no_presence = [SIMPLE[k] for k in ("colour", "shape", "size", "count", "position")]
    short = _distinct([sample_question(no_presence, scene, rng) for _ in range(int(rng.integers(3, 6)))])
    add("short", [qa.turn(short=True) for qa in short])
    mc = _distinct([sample_question(no_presence, scene, rng) for _ in range(int(rng.integers(1, 3)))])
    mc_pairs = []
    for qa in mc:
        prompt, letter, _ = multiple_choice(qa, rng)
        mc_pairs.append((prompt, letter))
    add("mc", mc_pairs)
    yes_first = bool(rng.random() < 0.5)
    yesno = _distinct([ask_presence(scene, rng, positive=p, shape_only=bool(rng.random() < 0.2))
                       for p in (yes_first, not yes_first)])
    add("yesno", [qa.turn(short=True) for qa in yesno])
    add("list", [object_listing(scene, rng)])
    keep = rng.random(len(records))
    return [record for (style, record), u in zip(records, keep) if u < STYLE_SHARE.get(style, 1.0)]


def lookup_records(scene: Scene, rng: np.random.Generator, image: str, rid: str) -> list[dict[str, Any]]:
    """`LOOKUP_RECORDS_PER_IMAGE` chats for a scene of two or more objects (none for one object).

    Each asks the colour or shape of up to three of its objects, every one named by its cell alone
    or, as often, by a random unique description without the asked attribute, plus one presence
    question (positive and negative in turn, half the negatives adversarial) at a random turn;
    half of the answers are short. In instruct.json lookups by place are a small share, and with
    them alone stage 2 did not learn them; nor presence, with an LM that reads both attributes
    (docs/embedded-model.md, "Lookups by place, learnt", "A copy path from the start").
    """
    if len(scene.objects) < 2:
        return []
    records = []
    first_positive = bool(rng.random() < 0.5)  # presence alternates from here: balanced over images
    for k in range(LOOKUP_RECORDS_PER_IMAGE):
        pairs = []
        for i in rng.permutation(len(scene.objects))[:3]:
            obj, category = scene.objects[int(i)], pick(rng, ("colour", "shape"))
            qa = ask_by_place(obj, category, rng) if rng.random() < 0.5 else ask_about(obj, scene, category, rng)
            if qa is not None:
                pairs.append(qa.turn(short=bool(rng.random() < 0.5)))
        presence = ask_presence(scene, rng, positive=(k % 2 == 0) == first_positive, adversarial=bool(rng.random() < 0.5))
        if presence is not None:
            turn = presence.turn(short=bool(rng.random() < 0.5))
            pairs.insert(int(rng.integers(len(pairs) + 1)), turn)
        if pairs:
            records.append({"id": f"{rid}-lookup{k}", "image": image, "conversations": _turns(pairs, rng)})
    return records


def bench_questions(scene: Scene, rng: np.random.Generator, image: str, index: int) -> list[dict[str, Any]]:
    """Seven questions per benchmark image: short colour/shape/count/position, one multiple
    choice, and one positive and one negative presence question (random or adversarial)."""
    out = []

    def entry(kind: str, qa: QA, text: str, **fields) -> None:
        out.append({"question_id": f"bench-{index:06d}-{len(out)}", "image": image, "type": kind,
                    "category": qa.category, "question": qa.question, "text": text, **fields})

    def ask(category: str) -> QA | None:
        for _ in range(20):  # retry other objects; None only when every object has an identical twin
            if category == "count":  # counting 1-5: mostly all objects, sometimes the commonest kind
                kind = "all" if rng.random() < 0.8 else str(rng.choice(["shape", "colour"]))
                qa = ask_count(scene, rng, allow_zero=False, kind=kind, prefer_many=True)
            else:
                qa = SIMPLE[category](scene, rng)
            if qa is not None:
                return qa
        return None

    for category in ("colour", "shape", "count", "position"):
        qa = ask(category)
        if qa is not None:  # None only when every object has an identical twin
            entry("short", qa, qa.question + SHORT_SUFFIX, answer=qa.short, answers=[qa.short] * 10)
    qa = ask(("colour", "shape", "count", "position")[index % 4])
    if qa is not None:
        prompt, letter, options = multiple_choice(qa, rng)
        entry("mc", qa, prompt, answer=letter, options=options, answer_text=qa.short)
    order = (True, False) if rng.random() < 0.5 else (False, True)
    for positive in order:
        qa = ask_presence(scene, rng, positive=positive, adversarial=index % 2 == 1)
        label = qa.short.lower()
        entry("yesno", qa, qa.question + SHORT_SUFFIX, answer=label, label=label,
              pope_split="positive" if positive else qa.negative_kind)
    return out


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def _dump(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=None, separators=(",", ":")) + "\n")


def _image_files(task: tuple[Path, int, int, str, int, Scene]) -> tuple[dict, list[dict], list[dict], list[dict]]:
    """One image written to disk, with its annotation and its text records: (annotation, captions
    and instruction records or benchmark questions, lookups). Depends only on its arguments, so
    images can be made in any process and order."""
    image_folder, seed, split, name, i, scene = task
    image = f"{name}/{i:06d}.png"
    rid = f"world-{name}-{i:06d}"
    _save_png(render(scene), image_folder / image)
    annotation = {"id": rid, "image": image, **scene.to_dict()}
    rng = text_rng(seed, split, i)
    if split != TRAIN:
        return annotation, [], bench_questions(scene, rng, image, i), []
    records = [caption_record(scene, rng, image, rid), *instruct_records(scene, rng, image, rid)]
    return annotation, records, [], lookup_records(scene, text_rng(seed, split, i, stream=2), image, rid)


PARALLEL_MIN_IMAGES = 2000  # smaller worlds are made in this process (starting workers costs more)


def _in_processes(fn, tasks: list, progress_label: str, progress: bool):
    """`map(fn, tasks)` in order, over the CPUs' processes for a large world (20 000 images took
    32 s instead of 52 on two cores); forked, so nothing is imported again."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    bar = dict(total=len(tasks), desc=progress_label, disable=not progress, leave=False)
    if cpus < 2 or len(tasks) < PARALLEL_MIN_IMAGES or "fork" not in multiprocessing.get_all_start_methods():
        yield from tqdm(map(fn, tasks), **bar)
        return
    with ProcessPoolExecutor(max_workers=min(cpus, 8), mp_context=multiprocessing.get_context("fork")) as pool:
        yield from tqdm(pool.map(fn, tasks, chunksize=64), **bar)


def write_world(out_dir: str | Path, seed: int, n_train_images: int, n_bench_images: int, *,
                image_size: int = 96, progress: bool = True) -> WorldFiles:
    """Generate and write the whole world (see the module docstring for the layout)."""
    files = WorldFiles(Path(out_dir))
    train, bench = generate_scenes(seed, n_train_images, n_bench_images, image_size)
    captions, instruct, lookups, questions = [], [], [], []
    for split, name, scenes in ((TRAIN, "train", train), (BENCH, "bench", bench)):
        (files.image_folder / name).mkdir(parents=True, exist_ok=True)
        annotations = []
        tasks = [(files.image_folder, seed, split, name, i, scene) for i, scene in enumerate(scenes)]
        for annotation, records, bench_rows, drills in _in_processes(_image_files, tasks, f"world {name}", progress):
            annotations.append(annotation)
            if split == TRAIN:
                captions.append(records[0])
                instruct += records[1:]
                lookups += drills
            else:
                questions += bench_rows
        _dump(annotations, files.scenes(name))
    _dump(captions, files.captions)
    _dump(instruct, files.instruct)
    _dump(lookups, files.lookups)
    files.bench.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions))
    meta = {"world_version": WORLD_VERSION, "seed": seed, "image_size": image_size, "image_folder": IMAGE_DIR,
            "n_train_images": n_train_images, "n_bench_images": n_bench_images,
            "n_captions": len(captions), "n_instruct": len(instruct), "n_lookups": len(lookups), "n_bench_questions": len(questions),
            "colours": list(COLOURS), "shapes": list(SHAPES), "sizes": list(SIZES), "positions": list(POSITIONS),
            "short_suffix": SHORT_SUFFIX, "mc_suffix": MC_SUFFIX}
    files.meta.write_text(json.dumps(meta, indent=2) + "\n")
    return files


def load_scenes(path: str | Path) -> list[Scene]:
    """Scenes from a scenes_*.json annotation file, in file order."""
    return [Scene.from_dict(d) for d in json.loads(Path(path).read_text())]


def read_bench(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def load_images(world: WorldFiles, split: str) -> tuple[torch.Tensor, list[Scene]]:
    """All images of a split as one uint8 [N, 3, S, S] tensor, with their scenes."""
    records = json.loads(world.scenes(split).read_text())
    arrays = [np.asarray(Image.open(world.image_folder / r["image"]).convert("RGB")) for r in records]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return pixels, load_scenes(world.scenes(split))


def normalise(pixels: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """uint8 [B, 3, S, S] -> what `ImageProcessor` makes of the same square image."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean_t) / std_t
