"""VQA accuracy and answer normalisation, rule for rule as the official scorers apply them.

Two scorers matter:

* the VQA challenge's ``vqaEval.py`` (GT-Vision-Lab/VQA), used by the VQAv2 and VizWiz servers:
  answers are only normalised when the ten human answers are not all identical, and the score is
  ``min(#other humans who gave the answer / 3, 1)`` averaged over the ten leave-one-out subsets;
* the EvalAI answer processor of MMF's ``m4c_evaluator`` (copied into LLaVA as
  ``llava/eval/m4c_evaluator.py``): LLaVA runs it on every answer it uploads to the VQAv2 and
  VizWiz servers, and its TextVQA score normalises both sides with it before the same soft accuracy.

The quirks are kept on purpose, because they change numbers: the period regex's ``(?!<=\\d)`` is a
(look-ahead) typo for a look-behind, ``re.UNICODE`` lands in ``sub``'s *count* argument so at most 32
periods are removed, contraction keys with capitals can never match after lower-casing, and
``"somebody'd"`` maps to ``"somebodyd"``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# vqaEval.py's contraction table: answers written without an apostrophe get it back.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}

# Only zero to ten are spelled out -> digits ("none" counts as zero).
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# Apostrophes, colons and periods are not in the list: they are handled (or kept) elsewhere.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")

_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # removes a period unless a digit follows ("3.5" stays)
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_MAX_PERIODS = int(re.UNICODE)  # = 32, see the module docstring


def strip_punctuation(text: str) -> str:
    """vqaEval's processPunctuation.

    A mark next to a space (or any mark at all, once the text has a digit,digit group like
    "1,000") is deleted; otherwise it becomes a space ("black-and-white" -> "black and white").
    """
    out = text
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        if delete_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, _MAX_PERIODS)


def digits_and_articles(text: str) -> str:
    """vqaEval's processDigitArticle: lower-case, number words -> digits, drop articles, contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """The normalisation vqaEval applies to both sides when the human answers disagree."""
    return digits_and_articles(strip_punctuation(text))


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def evalai_process(answer: str) -> str:
    """MMF/EvalAI's answer processor (LLaVA's m4c_evaluator.EvalAIAnswerProcessor).

    On top of `normalize_answer` it first lower-cases, deletes commas and question marks, and
    splits a possessive "'s" off its word ("dog's" -> "dog 's").
    """
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_answer(_clean_whitespace(text))


def _leave_one_out(prediction: str, answers: Sequence[str]) -> float:
    """Mean over each human answer left out of min(1, matches among the others / 3)."""
    if not answers:
        return 0.0
    total = 0.0
    for left_out in range(len(answers)):
        matches = sum(1 for i, a in enumerate(answers) if i != left_out and a == prediction)
        total += min(1.0, matches / 3)
    return total / len(answers)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One question's accuracy exactly as vqaEval.py computes it (0..1).

    Whitespace is cleaned on both sides; the punctuation/number/article normalisation is applied
    only if the human answers are not all the same string (so with ten identical "yes" answers a
    prediction "Yes" scores 0, as on the server).
    """
    gts = [_clean_whitespace(a) for a in answers]
    pred = _clean_whitespace(prediction)
    if len(set(gts)) > 1:
        gts = [normalize_answer(a) for a in gts]
        pred = normalize_answer(pred)
    return _leave_one_out(pred, gts)


def textvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One question's accuracy as LLaVA's TextVQA scorer (m4c TextVQAAccuracyEvaluator) computes it."""
    return _leave_one_out(evalai_process(prediction), [evalai_process(a) for a in answers])


def gqa_clean(prediction: str) -> str:
    """LLaVA's convert_gqa_for_eval.py: trailing periods removed, then lower-cased."""
    return prediction.rstrip(".").lower()
