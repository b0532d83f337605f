"""Questions about a scene, each with a one-word answer, a full-sentence answer and its answer space.

Generators return None when a question would be ambiguous for this scene (e.g. "what colour is
the star?" with two stars and no way to tell them apart), so every question has one right answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llavakit.world.language import (
    NUMBER_WORDS,
    article,
    capitalise,
    count_phrase,
    join_list,
    noun_phrase,
    place_reference,
    plural,
    refer,
    there_is,
    where,
)
from llavakit.world.scenes import COLOURS, MAX_OBJECTS, POSITIONS, SHAPES, SIZES, Scene, WorldObject

SHORT_SUFFIX = "\nAnswer the question using a single word or phrase."
MC_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class QA:
    category: str  # colour | shape | size | count | position | presence | reasoning
    question: str
    short: str  # the single word or phrase (lower case; "Yes"/"No" for presence)
    long: str  # a full-sentence answer
    options: tuple[str, ...] = ()  # the answer space, for multiple choice; empty: not multiple-choice
    negative_kind: str = ""  # presence questions with answer "No": "random" or "adversarial"

    def turn(self, short: bool) -> tuple[str, str]:
        """(question, answer) for a chat: the short form asks for a single word or phrase."""
        return (self.question + SHORT_SUFFIX, self.short) if short else (self.question, self.long)


def pick(rng: np.random.Generator, items):
    """One of `items`, uniformly (one draw from `rng`)."""
    return items[int(rng.integers(len(items)))]


def _pick_object(scene: Scene, rng: np.random.Generator) -> WorldObject:
    return pick(rng, scene.objects)


def _colour_of(obj: WorldObject, ref: str, rng: np.random.Generator) -> QA:
    q = pick(rng, (f"What colour is {ref}?", f"What is the colour of {ref}?", f"Which colour does {ref} have?"))
    return QA("colour", q, obj.colour, f"{capitalise(ref)} is {obj.colour}.", tuple(COLOURS))


def _shape_of(obj: WorldObject, ref: str, rng: np.random.Generator) -> QA:
    q = pick(rng, (f"What shape is {ref}?", f"What kind of shape is {ref}?", f"Which shape is {ref}?"))
    return QA("shape", q, obj.shape, f"{capitalise(ref)} is {article(obj.shape)}.", SHAPES)


def _attribute_of(obj: WorldObject, ref: str, category: str, rng: np.random.Generator) -> QA:
    return _colour_of(obj, ref, rng) if category == "colour" else _shape_of(obj, ref, rng)


def ask_about(obj: WorldObject, scene: Scene, category: str, rng: np.random.Generator) -> QA | None:
    """The colour or shape of `obj`, named by a random unique description without it (None when
    no description picks it out)."""
    ref = refer(obj, scene, hide=category, rng=rng)
    return None if ref is None else _attribute_of(obj, ref, category, rng)


def ask_colour(scene: Scene, rng: np.random.Generator) -> QA | None:
    return ask_about(_pick_object(scene, rng), scene, "colour", rng)


def ask_shape(scene: Scene, rng: np.random.Generator) -> QA | None:
    return ask_about(_pick_object(scene, rng), scene, "shape", rng)


def ask_by_place(obj: WorldObject, category: str, rng: np.random.Generator) -> QA:
    """The colour or shape of `obj`, named by its cell alone (a cell holds one object, so the
    reference is always unique): the lookup that stage 2's drills ask."""
    return _attribute_of(obj, place_reference(obj, hide=category), category, rng)


def ask_size(scene: Scene, rng: np.random.Generator) -> QA | None:
    obj = _pick_object(scene, rng)
    ref = refer(obj, scene, hide="size", rng=rng)
    if ref is None:
        return None
    q = pick(rng, (f"Is {ref} small or large?", f"What size is {ref}?", f"Is {ref} large or small?"))
    return QA("size", q, obj.size, f"{capitalise(ref)} is {obj.size}.", SIZES)


def ask_count(scene: Scene, rng: np.random.Generator, allow_zero: bool = True,
              kind: str | None = None, prefer_many: bool = False) -> QA | None:
    """How many objects / circles / red objects / red circles; the answer is a digit.

    `prefer_many` asks about the most frequent shape or colour, so answers above one are common
    (the benchmark wants counts spread over 1-5, not mostly ones).
    """
    kind = kind or pick(rng, ("all", "all", "shape", "colour", "both"))
    present = list(scene.objects)
    if kind == "all":
        noun, n = "object", len(present)
        q = pick(rng, ("How many objects are there in the image?", "How many objects are there?",
                        "How many objects can you see?"))
    else:
        ref = _pick_object(scene, rng)
        if prefer_many:
            key = {"shape": lambda o: o.shape, "colour": lambda o: o.colour, "both": lambda o: (o.colour, o.shape)}[kind]
            counts = Counter(key(o) for o in present)
            ref = pick(rng, [o for o in present if counts[key(o)] == max(counts.values())])
        # Usually ask about something present; sometimes (when zero is allowed) about anything.
        shape = ref.shape if not allow_zero or rng.random() < 0.7 else pick(rng, SHAPES)
        colour = ref.colour if not allow_zero or rng.random() < 0.7 else pick(rng, tuple(COLOURS))
        noun = {"shape": shape, "colour": f"{colour} object", "both": f"{colour} {shape}"}[kind]
        n = sum((kind == "colour" or o.shape == shape) and (kind == "shape" or o.colour == colour) for o in present)
        q = f"How many {plural(noun)} are there{pick(rng, ('', ' in the image', ' in the picture'))}?"
    if n == 0 and not allow_zero:
        return None
    space = tuple(str(i) for i in range(0 if allow_zero else 1, MAX_OBJECTS + 1))
    return QA("count", q, str(n), f"{there_is(n, noun)} in the image.", space)


def ask_position(scene: Scene, rng: np.random.Generator) -> QA | None:
    obj = _pick_object(scene, rng)
    ref = refer(obj, scene, hide="position", rng=rng)
    if ref is None:
        return None
    q = pick(rng, (f"Where is {ref}?", f"Where in the image is {ref}?", f"In which part of the image is {ref}?"))
    return QA("position", q, obj.position, f"{capitalise(ref)} is {where(obj.position)} of the image.", POSITIONS)


def absent_pairs(scene: Scene) -> list[tuple[str, str]]:
    present = {(o.colour, o.shape) for o in scene.objects}
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]


def ask_presence(scene: Scene, rng: np.random.Generator, positive: bool | None = None,
                 adversarial: bool | None = None, shape_only: bool = False) -> QA | None:
    """POPE style: "Is there a red circle in the image?"; negatives are truly absent.

    Adversarial negatives keep one attribute of a present object (a red star when there is a red
    circle), so they need the colour bound to the shape; random ones are any absent pair.
    """
    positive = bool(rng.random() < 0.5) if positive is None else positive
    kind = ""
    if shape_only:
        shapes_here = sorted({o.shape for o in scene.objects})
        pool = shapes_here if positive else [s for s in SHAPES if s not in shapes_here]
        if not pool:
            return None
        shape = pick(rng, pool)
        noun = shape
        matches = [o for o in scene.objects if o.shape == shape]
    else:
        if positive:
            obj = _pick_object(scene, rng)
            colour, shape = obj.colour, obj.shape
        else:
            absent = absent_pairs(scene)
            adversarial = bool(rng.random() < 0.5) if adversarial is None else adversarial
            kind = "adversarial" if adversarial else "random"
            if adversarial:
                near = [(c, s) for c, s in absent if any(o.colour == c or o.shape == s for o in scene.objects)]
                absent = near or absent
            colour, shape = pick(rng, absent)
        noun = f"{colour} {shape}"
        matches = [o for o in scene.objects if o.shape == shape and o.colour == colour]
    q = pick(rng, (f"Is there {article(noun)} in the image?", f"Is there {article(noun)} in the picture?",
                    f"Can you see {article(noun)} in the image?"))
    if not matches:
        return QA("presence", q, "No", f"No, there is no {noun} in the image.", ("Yes", "No"), kind or "random")
    if len(matches) == 1:
        long = f"Yes, there is {article(noun)} {where(matches[0].position)}."
    else:
        long = f"Yes, there are {count_phrase(len(matches), noun)}: " + join_list(
            [where(o.position) for o in matches]) + "."
    return QA("presence", q, "Yes", long, ("Yes", "No"))


# ---- complex reasoning: a question and a short justified answer --------------------------------

_EDGES = {"left": ("col", min, "column", "further left"), "right": ("col", max, "column", "further right"),
          "top": ("row", min, "row", "higher up"), "bottom": ("row", max, "row", "lower down")}


def reason_edge(scene: Scene, rng: np.random.Generator) -> QA | None:
    edge = pick(rng, tuple(_EDGES))
    axis, extreme, line, beyond = _EDGES[edge]
    best = extreme(getattr(o, axis) for o in scene.objects)
    closest = [o for o in scene.objects if getattr(o, axis) == best]
    if len(closest) != 1:  # two objects in the extreme column/row: no single answer
        return None
    o = closest[0]
    because = ("it is the only object" if len(scene.objects) == 1
               else f"no other object is in the same {line} or {beyond}")
    q = f"Which object is closest to the {edge} edge of the image, and what colour is it?"
    long = (f"The {noun_phrase(o, colour=False)} {where(o.position)} is closest to the {edge} edge, "
            f"because {because}. It is {o.colour}.")
    return QA("reasoning", q, o.colour, long)


def reason_compare(scene: Scene, rng: np.random.Generator) -> QA | None:
    a = _pick_object(scene, rng).shape
    b = pick(rng, [s for s in SHAPES if s != a])
    counts = Counter(o.shape for o in scene.objects)
    na, nb = counts[a], counts[b]
    q = f"Are there more {plural(a)} than {plural(b)} in the image?"
    facts = f"{there_is(na, a)} and {count_phrase(nb, b)}"
    if na > nb:
        long = f"Yes. {facts}, so there are more {plural(a)}."
    elif na < nb:
        long = f"No. {facts}, so there are fewer {plural(a)} than {plural(b)}."
    else:
        long = f"No. {facts}, so there are equally many."
    return QA("reasoning", q, "Yes" if na > nb else "No", long)


def reason_remove(scene: Scene, rng: np.random.Generator) -> QA | None:
    obj = _pick_object(scene, rng)
    ref = refer(obj, scene, rng=rng)
    n = len(scene.objects)
    q = f"If {ref} were removed, how many objects would be left?"
    long = (f"There {'is' if n == 1 else 'are'} {count_phrase(n, 'object')} in the image. "
            f"Without {ref}, {NUMBER_WORDS[n - 1] if n > 1 else 'none'} would be left.")
    return QA("reasoning", q, str(n - 1), long)


def reason_colours(scene: Scene, rng: np.random.Generator) -> QA | None:
    colours = Counter(o.colour for o in scene.objects)
    (top, k), *rest = colours.most_common()
    if len(scene.objects) == 1:
        return None
    if k >= 2 and (not rest or rest[0][1] < k):
        shapes = join_list([article(o.shape) for o in scene.objects if o.colour == top])
        long = f"{capitalise(top)} appears most often: there are {count_phrase(k, f'{top} object')} ({shapes})."
        return QA("reasoning", "Which colour appears most often in the image?", top, long)
    if len(colours) == 1:
        return QA("reasoning", "Are all the objects the same colour?", "Yes", f"Yes, they are all {top}.")
    return QA("reasoning", "Are all the objects the same colour?", "No",
              f"No. The objects are {join_list(sorted(colours))}.")


def reason_relative(scene: Scene, rng: np.random.Generator) -> QA | None:
    if len(scene.objects) < 2:
        return None
    i, j = rng.choice(len(scene.objects), size=2, replace=False).tolist()
    a, b = scene.objects[i], scene.objects[j]
    ra, rb = refer(a, scene, hide="position", rng=rng), refer(b, scene, hide="position", rng=rng)
    if ra is None or rb is None:
        return None
    if a.row != b.row and (a.col == b.col or rng.random() < 0.5):
        q = f"Is {ra} above or below {rb}?"
        answer = "above" if a.row < b.row else "below"
    elif a.col != b.col:
        q = f"Is {ra} to the left or to the right of {rb}?"
        answer = "to the left" if a.col < b.col else "to the right"
    else:
        return None
    long = (f"{capitalise(ra)} is {answer} of {rb}: it is {where(a.position)}, "
            f"while {rb} is {where(b.position)}.").replace("above of", "above").replace("below of", "below")
    return QA("reasoning", q, answer, long)


def reason_same(scene: Scene, rng: np.random.Generator) -> QA | None:
    if len(scene.objects) < 2:
        return None
    attr = pick(rng, ("colour", "shape"))
    i, j = rng.choice(len(scene.objects), size=2, replace=False).tolist()
    a, b = scene.objects[i], scene.objects[j]
    ra, rb = refer(a, scene, hide=attr, rng=rng), refer(b, scene, hide=attr, rng=rng)
    if ra is None or rb is None:
        return None
    va, vb = getattr(a, attr), getattr(b, attr)
    q = f"Do {ra} and {rb} have the same {attr}?"
    show = (lambda v: v) if attr == "colour" else article
    if va == vb:
        return QA("reasoning", q, "Yes", f"Yes, both are {plural(va) if attr == 'shape' else va}.")
    return QA("reasoning", q, "No", f"No: {ra} is {show(va)}, but {rb} is {show(vb)}.")


QuestionMaker = Callable[[Scene, np.random.Generator], "QA | None"]
SIMPLE: dict[str, QuestionMaker] = {
    "colour": ask_colour, "shape": ask_shape, "size": ask_size, "count": ask_count,
    "position": ask_position, "presence": ask_presence,
}
REASONING: tuple[QuestionMaker, ...] = (
    reason_edge, reason_compare, reason_remove, reason_colours, reason_relative, reason_same,
)


def sample_question(makers, scene: Scene, rng: np.random.Generator, tries: int = 20) -> QA | None:
    """A question from a randomly chosen maker, retrying makers that do not fit the scene."""
    makers = list(makers)
    for _ in range(tries):
        qa = pick(rng, makers)(scene, rng)
        if qa is not None:
            return qa
    return None


def multiple_choice(qa: QA, rng: np.random.Generator, n_options: int = 4) -> tuple[str, str, list[str]]:
    """(prompt with lettered options and the MC instruction, correct letter, options)."""
    distractors = [o for o in qa.options if o != qa.short]
    k = min(n_options - 1, len(distractors))
    chosen = [distractors[i] for i in rng.choice(len(distractors), size=k, replace=False)]
    options = [qa.short, *chosen]
    options = [options[i] for i in rng.permutation(len(options))]
    lines = [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    prompt = qa.question + "\n" + "\n".join(lines) + MC_SUFFIX
    return prompt, LETTERS[options.index(qa.short)], options
