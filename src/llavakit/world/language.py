"""The world's English: noun phrases, unambiguous references, captions and descriptions.

Every sentence is generated from a scene's annotation, so it is true of the image by
construction. References ("the red star", "the object at the top left") are chosen so that they
pick out exactly one object without naming the attribute a question asks about.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from llavakit.world.scenes import Scene, WorldObject

NUMBER_WORDS = {0: "no", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven",
                8: "eight", 9: "nine"}

CAPTION_REQUESTS = (
    "Describe the image concisely.",
    "Give a short description of the image.",
    "Write a brief caption for this picture.",
    "Summarise what the image shows in one sentence.",
    "What does this picture show? Answer briefly.",
    "Provide a one-sentence summary of the image.",
    "Caption the image.",
    "Briefly describe the shapes in the picture.",
)
DETAIL_REQUESTS = (
    "Describe the image in detail.",
    "Give a detailed description of this picture.",
    "Describe every object in the image: its shape, colour, size and position.",
    "What is in this image? Please describe it thoroughly.",
    "Explain the contents of the picture in detail.",
    "Provide a complete description of the scene.",
)


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def where(position: str) -> str:
    """A prepositional phrase for a cell: 'at the top left', 'on the left', 'in the centre'."""
    if position == "centre":
        return "in the centre"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"at the {position}"


def noun_phrase(obj: WorldObject, *, size: bool = True, colour: bool = True) -> str:
    words = ([obj.size] if size else []) + ([obj.colour] if colour else []) + [obj.shape]
    return " ".join(words)


def full_phrase(obj: WorldObject) -> str:
    """'a large red circle at the top left'."""
    return f"{article(noun_phrase(obj))} {where(obj.position)}"


def join_list(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def count_phrase(n: int, noun: str) -> str:
    """'one circle', 'three circles', 'no circles'."""
    return f"{NUMBER_WORDS[n]} {noun if n == 1 else plural(noun)}"


def there_is(n: int, noun: str) -> str:
    return ("There is " if n == 1 else "There are ") + count_phrase(n, noun)


# A reference is a set of attributes; these are tried from the shortest, so references stay
# natural ("the star") when they can and get specific ("the small red star") when they must.
_REFERENCE_KEYS = (
    ("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape"),
    ("colour",), ("size", "colour"), ("size",), ("position",),
)


def _matches(obj: WorldObject, other: WorldObject, keys: tuple[str, ...]) -> bool:
    return all(getattr(obj, k) == getattr(other, k) for k in keys)


def place_reference(obj: WorldObject, hide: str | None = None) -> str:
    """The object named by its cell: 'the circle at the top left' ('the object ...' when the shape is hidden)."""
    noun = "object" if hide == "shape" else obj.shape
    return f"the {noun} {where(obj.position)}"


def refer(obj: WorldObject, scene: Scene, hide: str | None = None, rng: np.random.Generator | None = None) -> str | None:
    """A definite description that picks out `obj` alone without mentioning `hide`.

    With an `rng`, a random unique description is chosen instead of the shortest, for variety.
    Returns None when no description works (e.g. two identical objects and position hidden).
    """
    options = []
    for keys in _REFERENCE_KEYS:
        if hide in keys:
            continue
        if sum(_matches(obj, o, keys) for o in scene.objects) == 1:
            options.append(keys)
    if not options:
        return None
    keys = options[0] if rng is None or rng.random() < 0.6 else options[int(rng.integers(len(options)))]
    if keys == ("position",):
        return place_reference(obj, hide)
    words = [getattr(obj, k) for k in ("size", "colour") if k in keys]
    noun = obj.shape if "shape" in keys else "object"
    return "the " + " ".join([*words, noun])


def canonical_caption(scene: Scene) -> str:
    """The one fixed-form caption per scene used for contrastive pretraining: every object, in order."""
    n = len(scene.objects)
    parts = [full_phrase(o) for o in scene.objects]
    head = "One object: " if n == 1 else f"{capitalise(NUMBER_WORDS[n])} objects: "
    return head + join_list(parts) + "."


def compact_caption(scene: Scene) -> str:
    """Every object as "size colour shape position", ';'-separated: short, for contrastive training."""
    return "; ".join(f"{o.size} {o.colour} {o.shape} {o.position}" for o in scene.objects)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A short caption naming every object, in one of several phrasings."""
    objects = list(scene.objects)
    n = len(objects)
    parts = [full_phrase(o) for o in objects]
    style = int(rng.integers(4))
    if style == 0:
        return canonical_caption(scene)
    if style == 1:
        if n == 1:
            return capitalise(parts[0]) + " on a plain background."
        return f"{capitalise(NUMBER_WORDS[n])} shapes on a plain background: " + join_list(parts) + "."
    if style == 2:
        return "A picture of " + join_list(parts) + "."
    # Grouped by shape: "Two circles (a large red one at the top left and ...) and one star (...)."
    groups: dict[str, list[WorldObject]] = {}
    for o in objects:
        groups.setdefault(o.shape, []).append(o)
    chunks = []
    for shape, members in groups.items():
        inner = join_list([f"{article(o.size + ' ' + o.colour + ' one')} {where(o.position)}" for o in members])
        chunks.append(f"{count_phrase(len(members), shape)} ({inner})")
    return capitalise(join_list(chunks)) + "."


# The grounding style: every object as a short list of attributes in an order the request names.
# Each attribute is then predicted right after the token that identifies its object ("circle" ->
# "red"), the one-step lookup into the image tokens that question answering builds on (see
# docs/embedded-model-history.md, "Binding").
LISTING_REQUESTS = (
    ("List the objects: shape, then colour.", ("shape", "colour")),
    ("List the objects: colour, then shape.", ("colour", "shape")),
)


def object_listing(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """(request, answer): "circle red, star blue." in a random object order."""
    request, keys = LISTING_REQUESTS[int(rng.integers(len(LISTING_REQUESTS)))]
    order = rng.permutation(len(scene.objects))
    items = [" ".join(getattr(scene.objects[i], k) for k in keys) for i in order]
    return request, ", ".join(items) + "."


def shape_first_listing(scene: Scene, rng: np.random.Generator) -> str:
    """Every object as "shape colour size place", in a random order: "star yellow large at the
    bottom right; circle red small on the left."

    In the other descriptions the colour comes before the shape word ("a yellow star"), so reading
    "the star's colour" from them takes a step back from the matched word; here it is the word
    right after it, the lookup a language model learns first (docs/embedded-model.md, "Can the
    base LM read?").
    """
    order = rng.permutation(len(scene.objects))
    items = [f"{o.shape} {o.colour} {o.size} {where(o.position)}" for o in (scene.objects[i] for i in order)]
    return "The objects, shape first: " + "; ".join(items) + "."


def detailed_description(scene: Scene, rng: np.random.Generator) -> str:
    """A paragraph: overview, one sentence per object, then a summary of counts."""
    objects = list(scene.objects)
    n = len(objects)
    what = "a single object" if n == 1 else f"{NUMBER_WORDS[n]} objects"
    sentences = [f"The image shows {what} on a plain light background."]
    order = list(range(n)) if rng.random() < 0.7 else list(rng.permutation(n))
    for i in order:
        o = objects[i]
        if rng.random() < 0.5:
            sentences.append(f"{capitalise(where(o.position))} there is {article(noun_phrase(o))}.")
        else:
            sentences.append(f"{capitalise(article(noun_phrase(o)))} is {where(o.position)}.")
    if n > 1:
        shapes = Counter(o.shape for o in objects)
        sentences.append("In total there " + ("is " if list(shapes.values())[0] == 1 else "are ")
                         + join_list([count_phrase(c, s) for s, c in shapes.items()]) + ".")
        sizes = Counter(o.size for o in objects)
        if len(sizes) == 1:
            sentences.append(f"All of the objects are {objects[0].size}.")
        else:
            sentences.append(f"{capitalise(NUMBER_WORDS[sizes['large']])} of them "
                             f"{'is' if sizes['large'] == 1 else 'are'} large and "
                             f"{NUMBER_WORDS[sizes['small']]} {'is' if sizes['small'] == 1 else 'are'} small.")
    empty = 9 - n
    if empty and rng.random() < 0.5:
        sentences.append("The rest of the image is empty.")
    return " ".join(sentences)
