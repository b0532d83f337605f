"""MM-Vet (Yu et al. 2023): 218 open questions over six capabilities, graded by an LLM.

Files (mm-vet.zip): mm-vet.json (``{"v1_0": {"imagename", "capability", "question", "answer"}}``)
and images/.  The model sees only the question.  Grading follows the official
mm-vet_evaluator.py: the few-shot prompt below, then ``question | ground truth | prediction | ``
(with spaces put around <AND>/<OR>); the judge (GPT-4 in the paper, 3 tokens max, temperature 0)
completes the table with a correctness between 0.0 and 1.0.  A reply that is not such a number is
asked again with "Predict the correctness of the answer (digit): " appended, at temperatures 0,
0.5, 1.0 and 1.5; if all fail the sample scores 0 (and is counted in "judge_unparseable").
Scores: per capability, the summed correctness of the questions needing it over their number
(x100), and the total over all questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llavakit.eval.base import Benchmark, EvalRequest, ScoreContext, answered, percent, read_json
from llavakit.eval.prompts import with_image

# The official few-shot grading prompt (mm-vet_evaluator.py), verbatim.
GRADER_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""
RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "
RETRY_TEMPERATURES = (0.0, 0.5, 1.0, 1.5)
MAX_TOKENS = 3


def grading_prompt(question: str, ground_truth: str, prediction: str) -> str:
    row = " | ".join([question, ground_truth.replace("<AND>", " <AND> ").replace("<OR>", " <OR> "), prediction, ""])
    return f"{GRADER_PROMPT}\n{row}"


def parse_grade(reply: str) -> float | None:
    """The reply's first space-separated field as a number in [0, 1], else None."""
    try:
        value = float(reply.split(" ")[0].strip())
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


def grade(judge, question: str, ground_truth: str, prediction: str) -> float | None:
    """One sample's correctness, with the official re-asking; None if no reply was usable."""
    prompt = grading_prompt(question, ground_truth, prediction)
    value = parse_grade(judge.chat([{"role": "user", "content": prompt}], temperature=0.0, max_tokens=MAX_TOKENS))
    for temperature in RETRY_TEMPERATURES:
        if value is not None:
            return value
        value = parse_grade(judge.chat([{"role": "user", "content": prompt + RETRY_SUFFIX}],
                                       temperature=temperature, max_tokens=MAX_TOKENS))
    return value


class MMVet(Benchmark):
    name = "mm_vet"
    title = "MM-Vet"
    splits = ("test",)
    headline = "total"
    reported = 31.1
    needs_judge = True
    max_new_tokens = 1024

    def _data(self) -> dict[str, dict]:
        return read_json(self.file("mm-vet.json"))

    def requests(self) -> list[EvalRequest]:
        images = self.image_dir("images")
        return [EvalRequest(key, with_image(item["question"]), (images / item["imagename"],), self.max_new_tokens)
                for key, item in self._data().items()]

    def score(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
              context: ScoreContext) -> dict[str, Any]:
        have, missing = answered(requests, predictions)
        if context.judge is None:
            return {"total": None, "status": "needs an LLM judge: pass --judge-url and --judge-model",
                    "answered": len(have), "missing": missing}
        data = self._data()
        per_capability: dict[str, list[float]] = {}
        total, unparseable = 0.0, 0
        grades = {}
        for r in have:
            item = data[r.id]
            value = grade(context.judge, item["question"], item["answer"], predictions[r.id])
            if value is None:
                unparseable += 1
                value = 0.0
            grades[r.id] = value
            total += value
            for capability in set(item["capability"]):
                per_capability.setdefault(capability, []).append(value)
        if unparseable:
            context.judge.note_unparseable(self.name, unparseable)
        return {"total": percent(total, len(have)),
                "per_capability": {k: percent(sum(v), len(v)) for k, v in sorted(per_capability.items())},
                "judge_unparseable": unparseable, "count": len(have), "missing": missing, "grades": grades}
