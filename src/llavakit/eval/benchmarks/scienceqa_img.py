"""ScienceQA-IMG (Lu et al. 2022): the test questions that come with an image.

Prompt (LLaVA's llava_test_CQM-A.json + model_vqa_science.py --single-pred-prompt):
``<image>\\nContext: <hint>\\n<question>\\nA. <choice>\\nB. <choice>...\\nAnswer with the option's
letter from the given choices directly.`` -- the "Context:" line only when the hint is not empty.
Scoring follows eval_science_qa.py (see `parsing.scienceqa_letter`); an unparseable answer is wrong.

With ``--judge-ensemble`` (LLaVA paper, Sec. 5.2: "GPT-4 as the judge") a text-only judge LLM also
answers each question; where it disagrees with the model it is asked again, shown both answers, and
its second choice is final.  A judge reply without a parseable letter leaves the model's answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llavakit.eval.base import Benchmark, EvalRequest, ScoreContext, answered, percent, read_json
from llavakit.eval.parsing import option_index, scienceqa_letter, the_answer_is
from llavakit.eval.prompts import LETTERS, MULTIPLE_CHOICE, options_block, with_image

_ANSWER_FORMAT = 'Finish your reply with a sentence of the form "The answer is X." where X is the option\'s letter.'


def question_text(problem: dict) -> str:
    """Context line (if any), question and lettered choices, as in llava_test_CQM-A.json."""
    context = f"Context: {problem['hint']}\n" if problem.get("hint") else ""
    return f"{context}{problem['question']}\n{options_block(problem['choices'])}"


class ScienceQAImg(Benchmark):
    name = "scienceqa_img"
    title = "SQA-IMG"
    splits = ("test", "val", "minitest", "minival")
    default_split = "test"
    reported = 66.8
    max_new_tokens = 1024  # model_vqa_science.py's limit

    def _problems(self) -> dict[str, dict]:
        problems = read_json(self.file("problems.json"))
        ids = read_json(self.file("pid_splits.json"))[self.split]
        return {pid: problems[pid] for pid in ids if problems[pid].get("image")}

    def requests(self) -> list[EvalRequest]:
        images = self.image_dir(f"images/{self.split}", self.split)
        return [EvalRequest(pid, with_image(f"{question_text(p)}\n{MULTIPLE_CHOICE}"),
                            (images / pid / p["image"],), self.max_new_tokens)
                for pid, p in self._problems().items()]

    def score(self, predictions: dict[str, str], requests: Sequence[EvalRequest],
              context: ScoreContext) -> dict[str, Any]:
        problems = self._problems()
        have, missing = answered(requests, predictions)
        letters = {r.id: scienceqa_letter(predictions[r.id]) for r in have}
        hits = sum(option_index(letters[r.id], len(problems[r.id]["choices"])) == problems[r.id]["answer"]
                   for r in have)
        result = {"accuracy": percent(hits, len(have)), "count": len(have), "missing": missing,
                  "unparsed_answers": sum(v == "FAILED" for v in letters.values())}
        if context.options.get("judge_ensemble"):
            if context.judge is None:
                result["ensemble"] = {"accuracy": None, "status": "--judge-ensemble needs --judge-url"}
            else:
                result["ensemble"] = self._ensemble(problems, have, letters, context.judge)
        return result

    def _ensemble(self, problems: dict[str, dict], have: Sequence[EvalRequest], letters: dict[str, str],
                  judge) -> dict[str, Any]:
        hits = disagreements = unparseable = 0
        for r in have:
            problem = problems[r.id]
            n = len(problem["choices"])
            ours = letters[r.id] if option_index(letters[r.id], n) >= 0 else None
            first = self._ask(judge, problem, None)
            final = ours
            if first is None or option_index(first, n) < 0:
                unparseable += 1
            elif ours is None:
                final = first  # the model gave no usable letter: take the judge's
            elif first != ours:
                disagreements += 1
                second = self._ask(judge, problem, (ours, first))
                if second is not None and option_index(second, n) >= 0:
                    final = second
                else:
                    unparseable += 1
            hits += final is not None and option_index(final, n) == problem["answer"]
        if unparseable:
            judge.note_unparseable(self.name, unparseable)
        return {"accuracy": percent(hits, len(have)), "count": len(have), "disagreements": disagreements,
                "judge_unparseable": unparseable}

    @staticmethod
    def _ask(judge, problem: dict, candidates: tuple[str, str] | None) -> str | None:
        """The judge's letter: on its own, or choosing between the model's and its own earlier answer."""
        choices = problem["choices"]
        text = f"{question_text(problem)}\n\n"
        if candidates is None:
            text += f"Answer this multiple-choice question (you cannot see the image). {_ANSWER_FORMAT}"
        else:
            shown = [f"Answer {i}: {letter}. {choices[LETTERS.index(letter)]}" for i, letter in enumerate(candidates, 1)]
            text += ("Two answers were proposed for this question:\n" + "\n".join(shown) +
                     f"\nDecide which one is correct. {_ANSWER_FORMAT}")
        return the_answer_is(judge.chat([{"role": "user", "content": text}], temperature=0.0, max_tokens=512))
