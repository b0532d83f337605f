"""System prompts and few-shot examples for writing instruction data from symbolic image context.

Written for llavakit in the spirit of LLaVA's data generation (Liu et al., 2023): a text-only LLM
reads captions (and, for `detail` and `reasoning`, normalised object boxes) and writes as if it
were looking at the photo.  Three kinds:

* ``conversation``: a multi-turn dialogue between someone asking about the photo and an assistant
  who sees it (captions only, like the paper);
* ``detail``: one rich description (the human turn is drawn from `DETAIL_INSTRUCTIONS`);
* ``reasoning``: questions that need reasoning beyond what is visible, with detailed answers.

Dialogue replies use labelled blocks -- ``Question:`` / ``Answer:`` separated by ``===`` -- the
format the paper's reasoning prompts use; `llavakit.data.parse` also accepts a few near misses.
"""

from __future__ import annotations

import hashlib

from llavakit.data.coco import ImageContext

KINDS = ("conversation", "detail", "reasoning")

_SEEING = (
    "Write as someone who is looking at the photo right now. Never refer to the information you were given: "
    "avoid words such as \"caption\", \"description\", \"sentence\", \"text\", \"coordinates\", "
    "\"bounding box\" or \"provided\"; say \"I can see\", \"the photo shows\", \"in the picture\" instead."
)
_BOXES = (
    "Some lines list objects as `name: [x1, y1, x2, y2]`, a box in fractions of the image size "
    "(0 to 1, origin at the top left; x grows to the right, y grows downwards). Turn them into "
    "ordinary language -- how many there are, where they are, what is next to, above or behind what -- "
    "and never quote the numbers."
)

SYSTEM_PROMPTS = {
    "conversation": (
        "You help build a dataset of conversations about photographs. You cannot see the photo; you get a "
        "few short sentences written by people who did, each describing the same photo.\n\n"
        "Write a natural conversation between a curious person asking about the photo and an AI assistant "
        "that can see it. Ask a variety of things: what the objects are, how many, what they look like, "
        "what people are doing, where things are. Include at least one question that needs some thought "
        "(why something is the way it is, what might happen next, what the scene suggests). Only ask "
        "questions the photo clearly answers; when the answer is not certain, do not ask it. Short "
        "questions are fine; answers should be friendly, direct and correct, longer where the question "
        "invites it.\n\n" + _SEEING + "\n\n"
        "Reply with the dialogue only, every turn labelled and turns separated by a line with ===:\n"
        "Question:\n<question>\n===\nAnswer:\n<answer>\n===\nQuestion:\n..."
    ),
    "detail": (
        "You are a visual assistant describing a single photograph. You cannot see it; you get a few "
        "sentences written by people who did, and a list of the objects in it with their positions.\n\n"
        + _BOXES + "\n\n"
        "Describe the photo thoroughly in one or two paragraphs: the setting, the main subjects and what "
        "they are doing, how many of each kind of object there are, their colours where known, and how "
        "they are arranged relative to each other. Do not invent things that are not supported. "
        + _SEEING + "\n\nReply with the description only."
    ),
    "reasoning": (
        "You are a visual assistant who can analyse a single photograph. You cannot see it; you get a few "
        "sentences written by people who did, and a list of the objects in it with their positions.\n\n"
        + _BOXES + "\n\n"
        "Write one or two questions about the photo that go beyond describing it: answering them should need "
        "an understanding of what is shown followed by background knowledge or reasoning -- why something "
        "is happening, what someone should watch out for, what the situation implies, how to help with a "
        "request related to the scene. Do not give the visual details away in the question. Then answer "
        "each question in detail, first grounding the answer in what the photo shows, then reasoning "
        "step by step to a conclusion.\n\n" + _SEEING + "\n\n"
        "Reply with the questions and answers only, labelled and separated by a line with ===:\n"
        "Question:\n<question>\n===\nAnswer:\n<answer>"
    ),
}

# (context shown to the LLM, the reply we want) -- a scene of our own for each kind.
_MARKET_CAPTIONS = (
    "A woman selling vegetables at an outdoor market stall.\n"
    "Crates of tomatoes, peppers and onions lined up on a wooden table.\n"
    "A vendor in a green apron hands a paper bag to a customer.\n"
    "An open air produce stand under a striped awning.\n"
    "Two people talk across a table covered with fresh vegetables."
)
_KITCHEN_CONTEXT = (
    "A small dog sits on a kitchen floor looking up at a counter.\n"
    "A brown dog waits next to a person who is cutting a cake.\n"
    "Someone slices a cake on the counter while a puppy watches.\n"
    "A kitchen with a wooden counter, a knife and a dog.\n"
    "A dog begging for food in a bright kitchen.\n\n"
    "dog: [0.112, 0.561, 0.384, 0.987]\n"
    "person: [0.402, 0.0, 0.873, 0.994]\n"
    "knife: [0.533, 0.412, 0.701, 0.468]\n"
    "cake: [0.581, 0.388, 0.812, 0.502]\n"
    "oven: [0.0, 0.212, 0.301, 0.655]"
)
_CROSSING_CONTEXT = (
    "Children in raincoats cross a street holding hands.\n"
    "A crossing guard holds up a stop sign for traffic.\n"
    "A line of kids walks across a wet road in front of stopped cars.\n"
    "A group of schoolchildren at a crosswalk on a rainy morning.\n"
    "Cars wait while a guard helps children across the street.\n\n"
    "person: [0.051, 0.302, 0.213, 0.915]\n"
    "person: [0.244, 0.455, 0.331, 0.802]\n"
    "person: [0.347, 0.461, 0.429, 0.811]\n"
    "person: [0.446, 0.449, 0.526, 0.806]\n"
    "stop sign: [0.072, 0.211, 0.163, 0.338]\n"
    "car: [0.612, 0.398, 0.998, 0.771]\n"
    "umbrella: [0.433, 0.347, 0.588, 0.462]"
)

FEW_SHOT: dict[str, list[tuple[str, str]]] = {
    "conversation": [
        (_MARKET_CAPTIONS,
         "Question:\nWhat kind of place is this?\n===\nAnswer:\nIt is an outdoor market, with a produce stall set "
         "up under a striped awning.\n===\nQuestion:\nWhat is being sold at the stall?\n===\nAnswer:\nFresh "
         "vegetables: I can see crates of tomatoes, peppers and onions lined up on a wooden table.\n===\n"
         "Question:\nWhat is the woman in the green apron doing?\n===\nAnswer:\nShe is the vendor, and she is "
         "handing a paper bag, probably filled with vegetables, to a customer across the table.\n===\n"
         "Question:\nWhy might the stall have an awning over it?\n===\nAnswer:\nThe awning shades the vegetables "
         "and the people from the sun and keeps off light rain. Fresh produce wilts and spoils faster in direct "
         "sunlight, so the shade helps the stall keep its goods looking fresh through the day, and it makes the "
         "stall more comfortable for the vendor and for shoppers who stop to browse."),
        ("A man rides a bicycle along a path next to a river.\n"
         "A cyclist in a yellow jacket on a riverside trail.\n"
         "A person biking past trees beside the water.\n"
         "A bike rider on a paved path in autumn.\n"
         "Someone cycling by a river with orange leaves on the ground.",
         "Question:\nWhat is the man doing?\n===\nAnswer:\nHe is riding a bicycle along a paved path beside a "
         "river.\n===\nQuestion:\nWhat colour is his jacket?\n===\nAnswer:\nHis jacket is yellow.\n===\n"
         "Question:\nWhat season does it seem to be?\n===\nAnswer:\nIt looks like autumn: orange leaves are lying "
         "on the ground along the path, and the trees suggest the season is turning."),
    ],
    "detail": [
        (_KITCHEN_CONTEXT,
         "The photo shows a bright kitchen where a person is cutting food at a wooden counter. They stand on the "
         "right half of the picture and fill almost its whole height, holding a knife over a cake that sits near "
         "the middle of the counter.\n\nOn the left, a small brown dog sits on the floor and looks up towards the "
         "counter, clearly hoping that something will drop. An oven takes up part of the left wall behind the "
         "dog. With one person, one dog and the food between them, the scene feels homely and a little comic."),
        (_CROSSING_CONTEXT,
         "It is a rainy morning at a street crossing. On the left, a crossing guard stands near the kerb and holds "
         "a stop sign up above shoulder height. Three children in raincoats walk across the wet road in a line, "
         "holding hands, roughly in the middle of the picture; one of them shelters under an umbrella.\n\n"
         "On the right, a car has stopped and waits for the children to reach the other side. The grey weather, "
         "the raincoats and the careful line of children give the scene the feel of a school run."),
    ],
    "reasoning": [
        (_KITCHEN_CONTEXT,
         "Question:\nWhat should the person keep in mind while preparing food here?\n===\nAnswer:\nA small dog is "
         "sitting right next to the counter and watching the person cut a cake with a knife. The person should be "
         "careful not to drop pieces of food, because many sweet foods are bad for dogs -- chocolate in particular "
         "is toxic to them -- and a dog that is fed from the counter learns to beg. The knife is another reason to "
         "pay attention: with a dog moving around their feet, the person could be startled or trip, so it is "
         "safer to keep the knife on the counter and the dog a little further away while cutting."),
        (_CROSSING_CONTEXT,
         "Question:\nWhy is the adult with the sign important in this situation?\n===\nAnswer:\nThe adult is a "
         "crossing guard: by holding up the stop sign they make the traffic stop so that the children can cross "
         "safely. That matters even more here because it is raining. A wet road lengthens a car's braking "
         "distance, rain makes it harder for drivers to see, and small children in a group are easy to miss and "
         "may move unpredictably. The stopped car on the right shows the guard is doing the job: traffic waits "
         "until the whole line of children has reached the other side."),
    ],
}

# The human turn of a `detail` record; one is picked per image (deterministically, from its id).
DETAIL_INSTRUCTIONS = (
    "Describe this image in detail.",
    "Give a thorough description of what you see in this picture.",
    "What is going on in this photo? Please describe it in detail.",
    "Can you describe the scene in this image as fully as possible?",
    "Walk me through everything you can see in this photo.",
    "Write a detailed description of this image.",
    "Explain in detail what this picture shows.",
    "Describe the contents of this photo, including where things are.",
    "Tell me about this image in as much detail as you can.",
    "Provide a rich, detailed account of the scene in this photograph.",
)


def uses_boxes(kind: str) -> bool:
    return kind in ("detail", "reasoning")


def build_messages(kind: str, image: ImageContext) -> list[dict]:
    """The chat request for one image: system prompt, few-shot turns, then the image's context."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    messages = [{"role": "system", "content": SYSTEM_PROMPTS[kind]}]
    for context, reply in FEW_SHOT[kind]:
        messages += [{"role": "user", "content": context}, {"role": "assistant", "content": reply}]
    messages.append({"role": "user", "content": image.describe(with_boxes=uses_boxes(kind))})
    return messages


def detail_instruction(record_id: str) -> str:
    """A stable choice of detail question (the same image always gets the same one, across reruns)."""
    digest = hashlib.sha256(record_id.encode("utf-8")).digest()
    return DETAIL_INSTRUCTIONS[int.from_bytes(digest[:4], "big") % len(DETAIL_INSTRUCTIONS)]
