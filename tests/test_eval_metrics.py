"""Each benchmark's scorer on its fixture (tests/fixtures/eval/<name>), with hand-computed expectations."""

import json
from pathlib import Path

import pytest

from llavakit.eval.base import ScoreContext
from llavakit.eval.benchmarks.mmbench import MMBench
from llavakit.eval.benchmarks.pope import pope_metrics
from llavakit.eval.parsing import mmbench_letter, mme_label, option_index, pope_label, scienceqa_letter
from llavakit.eval.registry import get_benchmark

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def score(name, predictions, split=None, context=None):
    bench = get_benchmark(name)(FIXTURES / name, split)
    return bench.score(predictions, bench.requests(), context or ScoreContext())


def test_vqav2_val():
    # 42000 "Black." -> "black": 4 humans -> 1.0 ; 42001 "Two" -> "2": 8 humans after normalising -> 1.0 ;
    # 73000 "yes" vs ten "no" -> 0.  Mean 2/3.
    s = score("vqav2", {"42000": "Black.", "42001": "Two", "73000": "yes"}, "val")
    assert s["accuracy"] == pytest.approx(200 / 3)
    assert s["per_answer_type"] == {"number": 100.0, "other": 100.0, "yes/no": 0.0}
    assert s["count"] == 3 and s["missing"] == 0


def test_vqav2_missing_predictions_are_reported_not_scored():
    s = score("vqav2", {"42000": "black and white"}, "val")  # 0.9 on the only answered question
    assert s["accuracy"] == pytest.approx(90.0) and s["missing"] == 2


def test_vqav2_test_dev_submission(tmp_path):
    bench = get_benchmark("vqav2")(FIXTURES / "vqav2")  # default split: test-dev, like the paper
    requests = bench.requests()
    s = bench.score({"11000": "A Cup."}, requests, ScoreContext())
    assert s["accuracy"] is None and s["answered"] == 1 and s["missing"] == 1
    [path] = bench.write_submission({"11000": "A Cup."}, requests, tmp_path)
    # EvalAI processing: "a cup." -> "cup"; the unanswered id is uploaded empty.
    assert json.loads(path.read_text()) == [{"question_id": 11000, "answer": "cup"}, {"question_id": 11001, "answer": ""}]


def test_gqa():
    # "Yes." -> "yes" right; "Traffic light." -> "traffic light" right; "On the left" != "left" wrong.
    s = score("gqa", {"20968379": "Yes.", "20968380": "Traffic light.", "20968381": "On the left"})
    assert s["accuracy"] == pytest.approx(200 / 3)


def test_vizwiz_val_and_test_submission(tmp_path):
    # "Unanswerable" -> 7 humans -> 1.0 ; "Coke." -> "coke", 2 humans -> 0.6.  Mean 0.8
    s = score("vizwiz", {"VizWiz_val_00000000.jpg": "Unanswerable", "VizWiz_val_00000001.jpg": "Coke."}, "val")
    assert s["accuracy"] == pytest.approx(80.0)
    bench = get_benchmark("vizwiz")(FIXTURES / "vizwiz", "test")
    [path] = bench.write_submission({"VizWiz_test_00000000.jpg": "Blue."}, bench.requests(), tmp_path)
    assert json.loads(path.read_text()) == [{"image": "VizWiz_test_00000000.jpg", "answer": "blue"},
                                            {"image": "VizWiz_test_00000001.jpg", "answer": ""}]


def test_scienceqa_letter_rules():
    assert scienceqa_letter("B") == "B"
    assert scienceqa_letter("B. how steady") == "B"
    assert scienceqa_letter("B.") == "FAILED"  # needs ". " and 3 characters
    assert scienceqa_letter("I think The answer is C. yes") == "C"
    assert scienceqa_letter("The answer is A. The answer is B.") == "FAILED"  # two matches
    assert scienceqa_letter("The answer is C") == "FAILED"  # the regex wants one more character
    assert scienceqa_letter("New Hampshire") == "FAILED"
    assert option_index("E", 3) == -1 and option_index("FAILED", 4) == -1 and option_index("B", 2) == 1


def test_scienceqa_img_only_image_questions():
    # Question 4 has no image, so SQA-IMG keeps 5 (answer B) and 11 (answer B).
    bench = get_benchmark("scienceqa_img")(FIXTURES / "scienceqa_img")
    assert [r.id for r in bench.requests()] == ["5", "11"]
    # 5: "B" right; 11: "The answer is A." -> A, wrong.  50%
    assert score("scienceqa_img", {"5": "B", "11": "The answer is A."})["accuracy"] == 50.0
    # 5: "B. how steady" right; 11: "New Hampshire" unparseable -> wrong.  50%, one unparsed
    s = score("scienceqa_img", {"5": "B. how steady", "11": "New Hampshire"})
    assert s["accuracy"] == 50.0 and s["unparsed_answers"] == 1
    # 5: "E" is not one of its three options -> wrong; 11: "B" right.
    assert score("scienceqa_img", {"5": "E", "11": "B"})["accuracy"] == 50.0


def test_textvqa():
    # "Dakota." -> "dakota" (7 humans) 1.0 ; "one thousand" -> "1 thousand" (2 humans) 0.6.  Mean 0.8
    assert score("textvqa", {"34602": "Dakota.", "34603": "one thousand"})["accuracy"] == pytest.approx(80.0)


def test_pope_label():
    assert pope_label("Yes, there is a dog.") == "yes"
    assert pope_label("No.") == "no"
    assert pope_label("There is not a cat.") == "no"
    assert pope_label("I see a cat. No dog.") == "yes"  # only the first sentence counts
    assert pope_label("Nope") == "yes"  # whole words only
    assert pope_label("no,") == "no"  # commas are removed first
    assert pope_label("") == "yes"


def test_pope_scores():
    # adversarial: yes/yes TP, no/no TN -> acc 100, P 1, R 1, F1 100, yes-ratio 50
    # popular: "There is not a cat." on a yes -> FN; "Yes" on a no -> FP -> acc 0, P 0, R 0, F1 0, yes 50
    # random: "yes" on yes TP; "I see a cat. No dog." -> yes on a no -> FP -> acc 50, P 1/2, R 1,
    #         F1 = 2 * 0.5 * 1 / 1.5 = 2/3, yes-ratio 100.   F1 average = (100 + 0 + 66.67) / 3
    preds = {"adversarial/1": "Yes, there is a dog.", "adversarial/2": "No.",
             "popular/1": "There is not a cat.", "popular/2": "Yes",
             "random/1": "yes", "random/2": "I see a cat. No dog."}
    s = score("pope", preds)
    adv, pop, rnd = (s["per_split"][k] for k in ("adversarial", "popular", "random"))
    assert (adv["accuracy"], adv["precision"], adv["recall"], adv["f1"], adv["yes_ratio"]) == (100, 100, 100, 100, 50)
    assert (pop["accuracy"], pop["precision"], pop["recall"], pop["f1"], pop["yes_ratio"]) == (0, 0, 0, 0, 50)
    assert rnd["accuracy"] == 50 and rnd["precision"] == 50 and rnd["recall"] == 100
    assert rnd["f1"] == pytest.approx(200 / 3) and rnd["yes_ratio"] == 100
    assert s["f1_avg"] == pytest.approx((100 + 0 + 200 / 3) / 3)


def test_pope_metrics_counts():
    m = pope_metrics([("yes", "yes"), ("yes", "yes"), ("no", "yes"), ("yes", "no"), ("no", "no")])
    # TP 2, FN 1, FP 1, TN 1: P = R = 2/3, F1 = 2/3, acc 3/5, yes-ratio 3/5
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 1)
    assert m["f1"] == pytest.approx(200 / 3) and m["accuracy"] == pytest.approx(60) and m["yes_ratio"] == pytest.approx(60)


def test_mme_label():
    assert mme_label("Yes") == "yes" and mme_label("No") == "no"
    assert mme_label("No, there is not.") == "no"  # "no, " contains "no"
    assert mme_label("Yes.") == "yes"
    assert mme_label("None") == "no"  # "none" starts with "no"
    assert mme_label("I think yes") == "other"  # only the first four characters are looked at
    assert mme_label("maybe") == "other"


def test_mme_scores():
    # existence: image 6040 "Yes" (Yes) right, "No, there is not." (No) right -> both right;
    #            image 6041 "Yes." (Yes) right, "Yes" (No) wrong.  acc 3/4 = 75, acc+ 1/2 = 50 -> 125
    # artwork:   "yes" (Yes) right, "maybe" -> other (No) wrong.  acc 50, acc+ 0 -> 50
    # code_reasoning: "No" (Yes) wrong, "No" (No) right.  acc 50, acc+ 0 -> 50
    preds = {"existence/000000006040.jpg#0": "Yes", "existence/000000006040.jpg#1": "No, there is not.",
             "existence/000000006041.jpg#0": "Yes.", "existence/000000006041.jpg#1": "Yes",
             "artwork/10002.jpg#0": "yes", "artwork/10002.jpg#1": "maybe",
             "code_reasoning/0020.png#0": "No", "code_reasoning/0020.png#1": "No"}
    s = score("mme", preds)
    assert s["per_category"]["existence"] == {"accuracy": 75.0, "accuracy_plus": 50.0, "score": 125.0}
    assert s["per_category"]["artwork"]["score"] == 50.0
    assert s["perception"] == 175.0 and s["cognition"] == 50.0


def test_mmbench_letter_rules():
    options = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
    assert mmbench_letter("B", options) == "B"
    assert mmbench_letter("The answer is C", options) == "C"
    assert mmbench_letter("(D) fish", options) == "D"  # decorated
    assert mmbench_letter("B.", options) == "B"
    assert mmbench_letter("It is a fish", options) == "D"  # "a" is lower case; matched by option text
    assert mmbench_letter("A dog is sitting there", options) == "B"  # "A" may be the article -> text match
    assert mmbench_letter("cat or dog", options) is None  # two option texts
    assert mmbench_letter("no idea", options) is None


def test_mmbench_circular():
    # Question 0 (cat/dog/bird/fish, answer B=dog) rotated: shown orders and the right letters are
    #   0: cat dog bird fish -> B;  1: dog bird fish cat -> A;  2: bird fish cat dog -> D;  3: fish cat dog bird -> C
    # Question 1 (lake/sea, answer A=lake): 0: lake sea -> A;  1: sea lake -> B
    bench = get_benchmark("mmbench")(FIXTURES / "mmbench")
    requests = bench.requests()
    assert [r.id for r in requests] == ["0", "0@1", "0@2", "0@3", "1", "1@1"]
    all_right = {"0": "B", "0@1": "A", "0@2": "D", "0@3": "C", "1": "A", "1@1": "B"}
    assert bench.score(all_right, requests, ScoreContext())["accuracy"] == 100.0
    # One wrong rotation sinks question 1 only.
    s = bench.score({**all_right, "1@1": "A"}, requests, ScoreContext())
    assert s["accuracy"] == 50.0 and s["per_category"] == {"attribute_recognition": 100.0, "scene": 0.0}
    # "fish" in rotation 2 is option B there, not D: wrong.  An unmatchable answer counts as wrong.
    s = bench.score({**all_right, "0@2": "fish", "1": "hmm"}, requests, ScoreContext())
    assert s["accuracy"] == 0.0 and s["unmatched"] == 1
    # Without all rotations answered, a question is not scored.
    s = bench.score({"0": "B", "1": "A", "1@1": "B"}, requests, ScoreContext())
    assert s["count"] == 1 and s["missing"] == 1 and s["accuracy"] == 100.0


def test_mmbench_file_with_official_circular_copies(tmp_path):
    # Rows with index >= 1e6 are MMBench's own shifted copies: asked as they are, grouped by index % 1e6.
    src = (FIXTURES / "mmbench" / "mmbench_dev_20230712.tsv").read_text().splitlines()
    header, row0 = src[0], src[1].split("\t")
    copy = list(row0)
    copy[0], copy[3], copy[4], copy[5], copy[6], copy[7] = "1000000", "dog", "bird", "fish", "cat", "A"
    (tmp_path / "mmbench_dev_20230712.tsv").write_text("\n".join([header, "\t".join(row0), "\t".join(copy)]) + "\n")
    bench = MMBench(tmp_path)
    requests = bench.requests()
    assert [(r.id, r.group) for r in requests] == [("0", "0"), ("1000000", "0")]
    assert "A. dog\nB. bird\nC. fish\nD. cat" in requests[1].prompt
    assert bench.score({"0": "B", "1000000": "A"}, requests, ScoreContext())["accuracy"] == 100.0
    assert bench.score({"0": "B", "1000000": "B"}, requests, ScoreContext())["accuracy"] == 0.0


def test_mmbench_submission(tmp_path):
    bench = get_benchmark("mmbench")(FIXTURES / "mmbench")
    [tsv, *_] = bench.write_submission({"0": "B", "1": "A"}, bench.requests(), tmp_path)
    lines = tsv.read_text().splitlines()
    # LLaVA's upload table: the TSV's columns minus hint/category/source/image/comment/l2-category,
    # with "prediction" inserted as the seventh column.
    assert lines[0].split("\t") == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert lines[1].split("\t")[6] == "B" and lines[2].split("\t")[6] == "A"


def test_seed_bench():
    # Only image questions: 101669 "A" right; 101670 "B." is not exactly "B" -> wrong; 101671 "A" vs C wrong.
    s = score("seed_bench", {"101669": "A", "101670": "B.", "101671": "A"})
    assert s["accuracy"] == pytest.approx(100 / 3)
    assert s["per_question_type"] == {"Instance Identity": 0.0, "Scene Understanding": 50.0}


class ScriptedJudge:
    """An in-process judge replying from a list, for metric tests (the HTTP path is in test_eval_judge)."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []
        self.unparseable = {}

    def chat(self, messages, temperature=0.0, max_tokens=None):
        self.calls.append((messages, temperature, max_tokens))
        return self.replies.pop(0)

    def note_unparseable(self, benchmark, count=1):
        self.unparseable[benchmark] = self.unparseable.get(benchmark, 0) + count


def test_llava_bench_relative_scores():
    # Replies: conv "8 6", detail "9,9", complex unparseable -> (-1, -1) as in summarize_gpt_review.py.
    # overall: reference mean (8 + 9 - 1) / 3 = 5.333, model (6 + 9 - 1) / 3 = 4.667 -> 4.667 / 5.333 = 87.5
    # parsed only: 7.5 / 8.5 = 88.2;  conv 6/8 = 75.0, detail 100.0, complex -1/-1 = 100.0 (sic)
    judge = ScriptedJudge(["8 6\nAssistant 2 misses details.", "9,9\nBoth fine.", "Both answers are good."])
    s = score("llava_bench_wild", {"0": "Eiffel tower", "1": "A red square.", "2": "Art."}, context=ScoreContext(judge))
    assert s["overall"] == 87.5 and s["overall_parsed_only"] == 88.2
    assert {k: v["relative"] for k, v in s["per_category"].items()} == {"complex": 100.0, "conv": 75.0, "detail": 100.0}
    assert s["judge_unparseable"] == 1 and judge.unparseable == {"llava_bench_wild": 1}
    messages, temperature, max_tokens = judge.calls[0]
    assert messages[0] == {"role": "system",
                           "content": "You are a helpful and precise assistant for checking the quality of the answer."}
    assert messages[1]["content"].startswith(
        "[Context]\nA red square, photographed in daylight.\n\n[Question]\nWhat is the name of this famous sight in the "
        "photo?\n\n[Assistant 1]\nReference answer 0.\n\n[End of Assistant 1]\n\n[Assistant 2]\nEiffel tower\n\n"
        "[End of Assistant 2]\n\n[System]\nWe would like to request your feedback")
    assert (temperature, max_tokens) == (0.2, 1024)
    # A list caption is joined with newlines.
    assert "[Context]\nA green square.\nIt hangs in a museum.\n\n" in judge.calls[2][0][1]["content"]


def test_llava_bench_review_parsing():
    from llavakit.eval.benchmarks.llava_bench_wild import parse_review

    assert parse_review("8 6\nbecause") == (8.0, 6.0)
    assert parse_review("8,6") == (8.0, 6.0)  # the comma becomes a space
    assert parse_review("7.5 9") == (7.5, 9.0)
    # eval_gpt_review_bench.py splits on single spaces: "9, 9" -> ["9", "", "9"] is not a pair.
    assert parse_review("9, 9") is None
    assert parse_review("Scores: 8 6") is None and parse_review("") is None


def test_llava_bench_without_judge():
    s = score("llava_bench_wild", {"0": "x"})
    assert s["overall"] is None and "judge" in s["status"]


def test_mm_vet_grades():
    # v1_0 "0.5"; v1_1 "1.0"; v1_2 "correct" is no number -> asked again with the digit suffix -> "0.8".
    # total (0.5 + 1.0 + 0.8) / 3 = 76.67; ocr (v1_0, v1_2) = 65; math 50; rec = know = 100
    judge = ScriptedJudge(["0.5", "1.0", "correct", "0.8"])
    s = score("mm_vet", {"v1_0": "x = -1", "v1_1": "Michelle Yeoh", "v1_2": "$9.99"}, context=ScoreContext(judge))
    assert s["total"] == pytest.approx(230 / 3)
    assert s["per_capability"] == pytest.approx({"know": 100.0, "math": 50.0, "ocr": 65.0, "rec": 100.0})
    assert s["judge_unparseable"] == 0
    first = judge.calls[0][0][0]["content"]
    assert first.endswith("\nWhat is x in the equation? | -1 <AND> -5 | x = -1 | ")
    assert first.startswith("Compare the ground truth and prediction from AI models")
    assert judge.calls[3][0][0]["content"].endswith(" | $9.99 | \nPredict the correctness of the answer (digit): ")
    assert [c[1] for c in judge.calls] == [0.0, 0.0, 0.0, 0.0] and judge.calls[0][2] == 3


def test_mm_vet_gives_zero_after_five_failed_replies():
    # First reply + retries at temperatures 0, 0.5, 1.0, 1.5 all unusable ("1.5" is out of range) -> 0.
    judge = ScriptedJudge(["bad", "1.5", "?", "yes", "-0.1", "0.9", "1"])
    s = score("mm_vet", {"v1_0": "x = 3", "v1_1": "someone"}, context=ScoreContext(judge))
    assert [c[1] for c in judge.calls[:5]] == [0.0, 0.0, 0.5, 1.0, 1.5]
    # v1_0 -> 0 (unparseable), v1_1 -> 0.9: total 45
    assert s["total"] == pytest.approx(45.0) and s["judge_unparseable"] == 1


def test_scienceqa_judge_ensemble():
    # 5: model "B"; judge says "The answer is B." -> agree -> B (right).
    # 11: model "A"; judge says C -> disagree -> asked again, picks "The answer is B." -> B (right).
    # Plain accuracy: 5 right, 11 wrong -> 50; ensemble -> 100.
    judge = ScriptedJudge(["Because... The answer is B.", "The answer is C.", "Having compared: The answer is B."])
    s = score("scienceqa_img", {"5": "B", "11": "A"}, context=ScoreContext(judge, options={"judge_ensemble": True}))
    assert s["accuracy"] == 50.0
    assert s["ensemble"] == {"accuracy": 100.0, "count": 2, "disagreements": 1, "judge_unparseable": 0}
    requery = judge.calls[2][0][0]["content"]
    assert "Answer 1: A. Maryland\nAnswer 2: C. Rhode Island" in requery


def test_scienceqa_judge_ensemble_falls_back_to_the_model():
    # 5: judge reply unparseable -> model's B (right).  11: model "A", judge "D", requery unparseable -> A (wrong).
    judge = ScriptedJudge(["I am not sure.", "The answer is D.", "Both could be right."])
    s = score("scienceqa_img", {"5": "B", "11": "A"}, context=ScoreContext(judge, options={"judge_ensemble": True}))
    assert s["ensemble"]["accuracy"] == 50.0 and s["ensemble"]["judge_unparseable"] == 2
    assert judge.unparseable == {"scienceqa_img": 2}


def test_tiny_world_scores():
    # short (VQA accuracy, 10 identical references): "Red." -> red 1 ; "a square" -> square 1 ;
    #   "three" -> 3 1 ; "bottom left" vs bottom 0 ; "blue" vs purple 0 ; triangle 1 ; 4 1 ;
    #   "Bottom left" 1  -> colour 50, shape 100, count 100, position 50, all 6/8 = 75
    # mc: "D" on D right ; "(C)" on B wrong -> colour 100, shape 0, all 50
    # presence: image 0 is random (No on no: TN, Yes on yes: TP -> F1 100); image 1 adversarial
    #   ("Yes, there is." on no: FP, "yes" on yes: TP -> P 1/2, R 1, F1 2/3) -> pope_f1 (100 + 66.7) / 2
    preds = {"bench-000000-0": "Red.", "bench-000000-1": "a square", "bench-000000-2": "three",
             "bench-000000-3": "bottom left", "bench-000000-4": "D", "bench-000000-5": "No",
             "bench-000000-6": "Yes", "bench-000001-0": "blue", "bench-000001-1": "triangle",
             "bench-000001-2": "4", "bench-000001-3": "Bottom left", "bench-000001-4": "(C)",
             "bench-000001-5": "Yes, there is.", "bench-000001-6": "yes"}
    s = score("tiny-world", preds)
    assert s["short"] == {"colour": 50.0, "count": 100.0, "position": 50.0, "shape": 100.0}
    assert s["short_accuracy"] == 75.0
    assert s["mc"] == {"colour": 100.0, "shape": 0.0} and s["mc_accuracy"] == 50.0
    assert s["pope"]["random"]["f1"] == 100.0 and s["pope"]["adversarial"]["f1"] == pytest.approx(200 / 3)
    assert s["pope_f1"] == pytest.approx(250 / 3)
    assert s["average"] == pytest.approx((75 + 50 + 250 / 3) / 3)
    assert s["count"] == 14 and s["missing"] == 0


def test_tiny_world_requests():
    bench = get_benchmark("tiny-world")(FIXTURES / "tiny-world")
    requests = bench.requests()
    assert len(requests) == 14 and {r.group for r in requests} == {"bench/000000.png", "bench/000001.png"}
    first = requests[0]
    assert first.prompt == ("<image>\nWhich colour does the circle have?\n"
                            "Answer the question using a single word or phrase.")
    assert first.images[0].is_file()
    assert requests[4].prompt.endswith("D. orange\nAnswer with the option's letter from the given choices directly.")
