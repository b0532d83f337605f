"""LLaVA-Bench (In-the-Wild): 60 open questions on 24 images, graded by an LLM judge.

Files (the liuhaotian/llava-bench-in-the-wild dataset): questions.jsonl, context.jsonl (image
captions for the judge), answers_gpt4.jsonl (reference answers) and images/.  The model sees only
the question.  The judge (GPT-4 in the paper) reads caption, question, the reference answer as
"Assistant 1" and the model's as "Assistant 2", and must start its reply with the two 1-10 scores;
the request and its parsing follow LLaVA's eval_gpt_review_bench.py with the rule of
llava/eval/table/rule.json.  The score is summarize_gpt_review.py's relative score:
mean(model) / mean(reference) * 100, per category (conv, detail, complex) and overall.  As there,
a reply whose first line is not two numbers enters the means as (-1, -1); such replies are counted
in "judge_unparseable", and "overall_parsed_only" leaves them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llavakit.eval.base import Benchmark, EvalRequest, ScoreContext, answered, read_jsonl
from llavakit.eval.prompts import with_image

JUDGE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
# The rule text LLaVA uses for all three llava_bench_* categories (rule.json), verbatim.
JUDGE_RULE = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image. For your reference, the visual "
    "content in the image is represented with a few sentences describing the image. \n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 and 2, "
    "respectively. The two scores are separated by a space.\n"
    "In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any potential "
    "bias and ensuring that the order in which the responses were presented does not affect your judgment."
)
JUDGE_TEMPERATURE = 0.2
JUDGE_MAX_TOKENS = 1024


def review_request(caption: str, question: str, reference: str, answer: str) -> list[dict]:
    """The judge's messages for one question (reference = Assistant 1, model = Assistant 2)."""
    content = (f"[Context]\n{caption}\n\n[Question]\n{question}\n\n"
               f"[Assistant 1]\n{reference}\n\n[End of Assistant 1]\n\n"
               f"[Assistant 2]\n{answer}\n\n[End of Assistant 2]\n\n[System]\n{JUDGE_RULE}\n\n")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}]


def parse_review(review: str) -> tuple[float, float] | None:
    """The two scores on the first line ("8 9" or "8, 9"), or None (the official -1, -1)."""
    fields = review.split("\n")[0].replace(",", " ").split(" ")
    if len(fields) != 2:
        return None
    try:
        return float(fields[0]), float(fields[1])
    except ValueError:
        return None


def relative_scores(tuples: Sequence[tuple[float, float]]) -> dict[str, float]:
    """summarize_gpt_review.py for one category: model/reference * 100, and both means * 10.

    As there, the means are rounded to 3 decimals first and the printed results to 1.
    """
    reference = round(sum(t[0] for t in tuples) / len(tuples), 3)
    model = round(sum(t[1] for t in tuples) / len(tuples), 3)
    return {"relative": round(100 * model / reference, 1) if reference else 0.0, "reference": round(10 * reference, 1),
            "model": round(10 * model, 1), "count": len(tuples)}


class LLaVABenchWild(Benchmark):
    name = "llava_bench_wild"
    title = "LLaVA-Bench-Wild"
    splits = ("test",)
    headline = "overall"
    reported = 65.4
    needs_judge = True
    max_new_tokens = 1024

    def _questions(self) -> dict[str, dict]:
        return {str(q["question_id"]): q for q in read_jsonl(self.file("questions.jsonl"))}

    def requests(self) -> list[EvalRequest]:
        images = self.image_dir("images")
        return [EvalRequest(qid, with_image(q["text"]), (images / q["image"],), self.max_new_tokens)
                for qid, q in self._questions().items()]

    def score(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
              context: ScoreContext) -> dict[str, Any]:
        have, missing = answered(requests, predictions)
        if context.judge is None:
            return {"overall": None, "status": "needs an LLM judge: pass --judge-url and --judge-model",
                    "answered": len(have), "missing": missing}
        questions = self._questions()
        captions = {}
        for c in read_jsonl(self.file("context.jsonl")):
            caption = c["caption"]
            captions[c["image"]] = "\n".join(caption) if isinstance(caption, list) else caption
        references = {str(a["question_id"]): a["text"] for a in read_jsonl(self.file("answers_gpt4.jsonl"))}
        per_category: dict[str, list[tuple[float, float]]] = {}
        parsed_only: list[tuple[float, float]] = []
        unparseable = 0
        for r in have:
            q = questions[r.id]
            reply = context.judge.chat(review_request(captions[q["image"]], q["text"], references[r.id], predictions[r.id]),
                                       temperature=JUDGE_TEMPERATURE, max_tokens=JUDGE_MAX_TOKENS)
            scores = parse_review(reply)
            if scores is None:
                unparseable += 1
            else:
                parsed_only.append(scores)
            per_category.setdefault(q["category"], []).append(scores or (-1.0, -1.0))
        if unparseable:
            context.judge.note_unparseable(self.name, unparseable)
        everything = [t for ts in per_category.values() for t in ts]
        return {"overall": relative_scores(everything)["relative"] if everything else 0.0,
                "overall_parsed_only": relative_scores(parsed_only)["relative"] if parsed_only else 0.0,
                "per_category": {k: relative_scores(v) for k, v in sorted(per_category.items())},
                "judge_unparseable": unparseable, "count": len(have), "missing": missing}
