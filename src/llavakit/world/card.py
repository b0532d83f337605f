"""The shipped model's card (README.md beside its weights), written from a run's tiny_world.json."""

from __future__ import annotations

from typing import Any

from llavakit.world.scenes import COLOURS, MAX_OBJECTS, POSITIONS, SHAPES


def _row(name: str, scores: dict[str, Any]) -> str:
    short = scores.get("short", {})
    pope = scores.get("pope", {})
    return (f"| {name} | {short.get('colour', 0):.1f} | {short.get('shape', 0):.1f} | {short.get('count', 0):.1f} | "
            f"{short.get('position', 0):.1f} | {scores.get('short_accuracy', 0):.1f} | {scores.get('mc_accuracy', 0):.1f} | "
            f"{scores.get('pope_f1', 0):.1f} | {pope.get('random', {}).get('f1', 0):.1f} | "
            f"{pope.get('adversarial', {}).get('f1', 0):.1f} |")


# Chance on the benchmark's categories, from the world's vocabularies (counts are 1-5; multiple
# choice has four options).
CHANCE = {"colour": 100 / len(COLOURS), "shape": 100 / len(SHAPES), "count": 100 / MAX_OBJECTS,
          "position": 100 / len(POSITIONS), "multiple choice": 100 / 4}
RELIABLE = 80.0
TIME_TARGET_S = 20 * 60  # issue 5: the whole recipe on 2 CPU cores


def _limits(final: dict[str, Any], portable: bool, total_seconds: float | None = None) -> list[str]:
    """The card's limitations, from the scores and the recipe's time: what is reliable, what is
    not, what is at chance, which targets of issue 5 are missed."""
    scores = {**final.get("short", {}), "multiple choice": final.get("mc_accuracy", 0.0)}
    weak = [f"{name} {value:.1f} % (chance {CHANCE[name]:.1f} %)" for name, value in scores.items()
            if value < RELIABLE]
    strong = [f"{name} {value:.1f} %" for name, value in scores.items() if value >= RELIABLE]
    pope = final.get("pope_f1", 0.0)
    (strong if pope >= RELIABLE else weak).append(f"presence (POPE F1) {pope:.1f}")
    targets = {"colour": (scores.get("colour", 0.0), 90.0), "shape": (scores.get("shape", 0.0), 90.0),
               "POPE F1": (pope, 85.0)}
    missed = [f"{name} {value:.1f} (target {target:g})" for name, (value, target) in targets.items()
              if value < target]
    if total_seconds is not None and total_seconds > TIME_TARGET_S:
        missed.append(f"the recipe's time, {total_seconds / 60:.1f} min on 2 cores (target {TIME_TARGET_S // 60} min)")
    lines = [
        f"- **Reliable** (≥ {RELIABLE:g} %): {', '.join(strong) or 'nothing'}. **Not reliable**: "
        f"{', '.join(weak) or 'nothing'}.",
        "- About one of several objects it must first find the object the question names, by another",
        "  attribute (\"the red object\") or by its place (\"the object at the top left\");",
        "  docs/embedded-model.md has the scores by kind of question and by object count.",
        "- Targets set for it and not met: " + (", ".join(missed) or "none") + ".",
    ]
    if portable:
        lines += [
            "- Those half-learnt scores move by tens of points with any change in rounding. The run",
            "  pinned torch's CPU kernels to AVX2 (portable numerics), so other x86-64 CPUs with AVX2",
            "  should give the same weights; that was checked on one machine with a simulated CPU",
            "  without AVX-512, not on a second CPU (docs/embedded-model.md, \"Reproducibility\").",
        ]
    else:
        lines += [
            "- The recipe is bit-for-bit reproducible on one machine. Another CPU rounds differently;",
            "  rerun with torch's kernels pinned to AVX2 (the rounding of a CPU without AVX-512), the",
            "  same seed scored within 3 points of this run on every targeted score, and its stage-1-only",
            "  model 5 points lower; no second physical CPU was tried (docs/embedded-model.md,",
            "  \"Reproducibility\").",
            "- The scores depend on the seed: another seed's LM can miss a lookup that this one learnt",
            "  (seed 0 scored colour 69 and POPE F1 65; docs/embedded-model.md, \"Answers that weigh more\").",
        ]
    return lines


def model_card(summary: dict[str, Any]) -> str:
    recipe, timings = summary["recipe"], summary["timings_s"]
    final, baseline = summary["scores"]["final"], summary["scores"]["stage1_only"]
    training = summary.get("training", {})
    machine = summary.get("machine", {})
    gain = final["short_accuracy"] - baseline["short_accuracy"]
    lines = [
        "# tiny-world: llavakit's embedded default model",
        "",
        f"A LLaVA-1.5 of {summary.get('parameters', 0) / 1e6:.1f} M parameters that llavakit trains itself, "
        "from nothing, with the packaged recipe",
        "`tiny-world`. It answers questions about images of llavakit's synthetic world: one to five",
        "coloured shapes on a 3 x 3 grid, at 96 x 96 pixels. `llavakit chat`, `ask`, `serve` and `web` use it",
        "when no `--model` is given, so everything works offline with no download.",
        "",
        "## How it was made",
        "",
        "```",
        f"llavakit train tiny-world seed={recipe['seed']} budget={recipe['budget']}",
        "```",
        "",
        "1. **World**: images with captions, instructions in LLaVA-Instruct's styles (conversation, detailed",
        "   description, complex reasoning) plus short-answer, multiple-choice and yes/no questions, and a",
        "   held-out benchmark; all generated from the seed.",
        "2. **Backbones**: a byte-level BPE tokenizer, a CLIP-style vision tower pretrained contrastively on",
        "   the world's image-caption pairs, a Llama-style LM pretrained on the world's text, on reading",
        "   exercises (questions answered from a description in the same chat), on general-knowledge",
        "   sentences that tell its colour, shape and size words apart, and (where the budget says so) on",
        "   captions and chats whose image is given as nine scene slots, one per grid cell, each the sum",
        "   of the word embeddings that name the cell; where the budget says so, the LM starts with a path",
        "   that copies context words to its output and must name each slot's words at the slot. Both",
        "   backbones are shipped in `backbones/`: the reduced",
        "   recipe (`budget=small`) starts LLaVA from them.",
        "3. **LLaVA stage 1**: the mlp2x_gelu projector alone, on the captions (plain template).",
        *([
            "   Then the projector is fitted by least squares so that each image token is its cell's scene",
            "   slot (`llavakit.world.align`).",
            "4. **LLaVA stage 2**: from the aligned projector, on the instructions and, where the budget adds",
            "   them, drills that ask the colour or shape of an object named by its place or by a",
            "   description, and whether an object is present (vicuna_v1 template); the tower stays frozen,",
            "   and the projector too where the budget's stage 2 trains the LM alone.",
        ] if "align" in training else [
            "4. **LLaVA stage 2**: projector and LM, on the instructions (vicuna_v1 template); the tower stays frozen.",
        ]),
        "",
        "| step | seconds |",
        "| --- | ---: |",
    ]
    steps = [(name, seconds) for name, seconds in timings.items() if name != "total"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in steps]
    lines.append(f"| **total** | **{timings['total']:.0f}** |")  # the pipeline always records it
    lines += [
        "",
        f"Measured on {machine.get('platform', '?')}"
        + (f" ({machine['cpu']}, torch's {machine['cpu_capability']} kernels)" if "cpu" in machine else "")
        + f" with torch {machine.get('torch', '?')}, {summary.get('torch_threads', '?')} threads.",
        "",
        "| stage | steps | final loss |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {s.get('steps')} | {s.get('final_loss', 0):.3f} |" for name, s in training.items()]
    lines += [
        "",
        "## Scores",
        "",
        "The held-out `tiny-world` benchmark (`llavakit eval --benchmark tiny-world`), greedy decoding:",
        "short answers by VQA accuracy, multiple choice by letter, yes/no presence by POPE's F1.",
        "",
        "| model | colour | shape | count | position | short, all | multiple choice | POPE F1 | random | adversarial |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        _row("this model (stages 1 + 2)", final),
        _row("stage 1 only", baseline),
        "",
        f"Instruction tuning adds {gain:.1f} points on short answers. The bundled examples",
        "(`examples/examples.json`) ask how many objects there are, and the colour or shape of an",
        "object named by its other attribute (docs/embedded-model.md has the scores by kind of",
        "question and by object count).",
        "",
        "## What it cannot do",
        "",
        *_limits(final, summary.get("numerics", {}).get("portable", False),
                 summary.get("timings_s", {}).get("total")),
        "- It knows only its world: five shapes, six colours, two sizes, nine grid positions. Photos,",
        "  text in images, people or anything else get confident answers about coloured shapes.",
        "- Its language is the world's templated English; free-form questions outside those patterns",
        "  get answers in the nearest pattern it knows.",
        "- Images are resized to 96 x 96 pixels; fine detail is lost.",
        "- It is a demonstration of the recipe and of llavakit's tools, not a useful assistant.",
        "",
    ]
    return "\n".join(lines)
