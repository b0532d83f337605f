"""Golden snapshots: the exact user prompt each benchmark sends for its first fixture record.

The expected strings are written out by hand from LLaVA-1.5's evaluation files (see
docs/evaluation.md), not produced by the code under test.
"""

from pathlib import Path

import pytest

from llavakit.conversation import Message, get_template
from llavakit.eval.registry import BENCHMARKS, get_benchmark

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."

GOLDEN = {
    ("vqav2", "val"): "<image>\nWhat color is the cat?" + SHORT,
    ("vqav2", "test-dev"): "<image>\nWhat is on the table?" + SHORT,
    ("gqa", None): "<image>\nDo the shorts have dark color?" + SHORT,
    ("vizwiz", "val"): "<image>\nWhat is this?\nWhen the provided information is insufficient, respond with "
                       "'Unanswerable'." + SHORT,
    ("scienceqa_img", None): "<image>\nContext: People can use the engineering-design process.\nGordon was an engineer."
                             "\nWhich of the following could Gordon's test show?\nA. if the spacecraft was damaged\n"
                             "B. how steady a parachute was\nC. whether it would swing" + LETTER,
    ("textvqa", None): "<image>\nWhat is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL, Single-Use, "
                       "Camera" + SHORT,
    ("pope", None): "<image>\nIs there a snowboard in the image?" + SHORT,
    ("mme", None): "<image>\nIs there a train in this image?" + SHORT,
    ("mmbench", None): "<image>\nWhat animal is shown?\nA. cat\nB. dog\nC. bird\nD. fish" + LETTER,
    ("mmbench_cn", None): "<image>\n图中是什么动物？\nA. 猫\nB. 狗\nC. 鸟\nD. 鱼\n请直接回答选项字母。",
    ("seed_bench", None): "<image>\nQuestion 101669: what is shown?\nA. a red square\nB. a green square\n"
                          "C. a blue square\nD. nothing" + LETTER,
    ("llava_bench_wild", None): "<image>\nWhat is the name of this famous sight in the photo?",
    ("mm_vet", None): "<image>\nWhat is x in the equation?",
    ("tiny-world", None): "<image>\nWhich colour does the circle have?" + SHORT,
}


def test_every_benchmark_has_a_golden_prompt():
    assert {name for name, _ in GOLDEN} == set(BENCHMARKS)


@pytest.mark.parametrize("name, split", list(GOLDEN))
def test_first_prompt(name, split):
    first = get_benchmark(name)(FIXTURES / name, split).requests()[0]
    assert first.prompt == GOLDEN[(name, split)]
    assert len(first.images) == first.prompt.count("<image>") == 1


def test_other_records():
    def prompts(name, split=None):
        return [r.prompt for r in get_benchmark(name)(FIXTURES / name, split).requests()]

    # ScienceQA without a hint: no "Context:" line at all.
    assert prompts("scienceqa_img")[1] == ("<image>\nWhat is the name of the colony shown?\nA. Maryland\n"
                                           "B. New Hampshire\nC. Rhode Island\nD. Vermont" + LETTER)
    # TextVQA without OCR tokens: no reference line; the question's first letter is capitalised.
    assert prompts("textvqa")[1] == "<image>\nHow many miles are left?" + SHORT
    # MME: the double space before "Please answer yes or no." in some files goes too.
    assert prompts("mme")[-1] == "<image>\nIs a c++ code shown in the picture?" + SHORT
    # MMBench: the hint comes first; options stop at the first missing one; rotation keeps letters in order.
    mmb = prompts("mmbench")
    assert mmb[4] == "<image>\nThe image shows water.\nWhat is in the picture?\nA. lake\nB. sea" + LETTER
    assert mmb[5] == "<image>\nThe image shows water.\nWhat is in the picture?\nA. sea\nB. lake" + LETTER
    assert mmb[1] == "<image>\nWhat animal is shown?\nA. dog\nB. bird\nC. fish\nD. cat" + LETTER


def test_full_vicuna_rendering():
    # What LLaVA-1.5 (conv_vicuna_v1) feeds the model for the POPE record.
    prompt = get_benchmark("pope")(FIXTURES / "pope").requests()[0].prompt
    rendered = get_template("vicuna_v1").render([Message("user", prompt)], add_generation_prompt=True).text
    assert rendered == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nIs there a snowboard in the image?\n"
        "Answer the question using a single word or phrase. ASSISTANT:"
    )
