"""General knowledge about the world's words, for the LM's pretraining text.

In the world's own text every colour (and every shape) occurs in the same contexts: which one an
image holds is unknowable without the image. A text-only LM trained on it learns the six colour
words as one vector and the five shape words as another. A real LLM knows that a triangle has
three corners and that bananas are yellow; these sentences give the world's LM the same kind of
knowledge, so that each attribute word means something of its own before stage 2.
"""

from __future__ import annotations

import numpy as np

from llavakit.world.questions import pick

SHAPE_FACTS: dict[str, tuple[str, ...]] = {
    "circle": ("is round", "has no corners", "has one curved side", "is the shape of a wheel",
               "is the shape of a coin"),
    "square": ("has four corners", "has four equal sides", "is the shape of a chess board",
               "is a box seen from the front", "has four right angles"),
    "triangle": ("has three corners", "has three sides", "is the shape of a slice of pizza",
                 "is the shape of a roof", "has three angles"),
    "star": ("has five points", "shines in the night sky", "is drawn with five spikes",
             "is the shape of a sheriff's badge", "has ten edges"),
    "cross": ("is two bars that meet in the middle", "is the shape of a plus sign", "has four arms",
              "is the shape of a crossroads", "has twelve edges"),
}
COLOUR_FACTS: dict[str, tuple[str, ...]] = {
    "red": ("tomatoes", "strawberries", "fire engines", "cherries", "stop signs"),
    "green": ("grass", "leaves", "limes", "frogs", "peas"),
    "blue": ("the sky", "the sea", "blueberries", "sapphires", "jeans"),
    "yellow": ("bananas", "lemons", "the sun", "egg yolks", "sunflowers"),
    "purple": ("grapes", "plums", "violets", "aubergines", "lavender"),
    "orange": ("oranges", "carrots", "pumpkins", "tangerines", "apricots"),
}
COLOUR_MIXES: tuple[tuple[str, str, str], ...] = (
    ("red", "yellow", "orange"), ("blue", "yellow", "green"), ("red", "blue", "purple"),
)
SIZE_FACTS: dict[str, tuple[str, ...]] = {
    "large": ("an elephant", "a mountain", "a whale", "a house", "a bus"),
    "small": ("a mouse", "an ant", "a pebble", "a button", "a seed"),
}


def _shape_fact(rng: np.random.Generator) -> str:
    shape = pick(rng, list(SHAPE_FACTS))
    fact = pick(rng, SHAPE_FACTS[shape])
    forms = (f"A {shape} {fact}.", f"The shape that {fact} is the {shape}.",
             f"Which shape {fact}? The {shape}.", f"Every {shape} {fact}.")
    return pick(rng, forms)


def _colour_fact(rng: np.random.Generator) -> str:
    if rng.random() < 0.2:
        a, b, mix = pick(rng, COLOUR_MIXES)
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
        return f"Mixing {a} and {b} paints gives {mix}." if rng.random() < 0.5 else \
            f"What do {a} and {b} make? They make {mix}."
    colour = pick(rng, list(COLOUR_FACTS))
    thing = pick(rng, COLOUR_FACTS[colour])
    verb = "is" if thing.startswith("the ") else "are"
    forms = (f"{thing[0].upper()}{thing[1:]} {verb} {colour}.", f"What colour {verb} {thing}? {colour.capitalize()}.",
             f"Something {colour}: {thing}.", f"The colour of {thing} is {colour}.")
    return pick(rng, forms)


def _size_fact(rng: np.random.Generator) -> str:
    size = pick(rng, list(SIZE_FACTS))
    thing = pick(rng, SIZE_FACTS[size])
    other = "small" if size == "large" else "large"
    forms = (f"{thing.capitalize()} is {size}.", f"{thing.capitalize()} is {size}, not {other}.",
             f"Is {thing} large or small? It is {size}.")
    return pick(rng, forms)


def fact_document(rng: np.random.Generator) -> str:
    """Three to six facts about shapes, colours and sizes, as one paragraph."""
    makers = (_shape_fact, _colour_fact, _size_fact)
    weights = np.array([0.4, 0.45, 0.15])
    picks = rng.choice(len(makers), size=int(rng.integers(3, 7)), p=weights)
    return " ".join(makers[k](rng) for k in picks)
