r"""Rule-based answer extraction shared by the benchmark scorers: the last ``\boxed{}`` first, then VLMEvalKit's rules.

The paper evaluates with VLMEvalKit, whose scorers first try cheap rules on the raw response (``can_infer`` for
options, ``YOrN_Extraction`` for yes/no) and call an LLM judge only when the rules find nothing. Here the judge is
optional (`eval.judge`, asked only for a response without ``\boxed{}`` that the rules cannot read); without it such a
response is unanswered, which is what VLMEvalKit's ``exact_matching`` mode does too.
The paper's models answer as ``<think>…</think> … \boxed{X}``, so each extractor reads the boxed answer first and
falls back to VLMEvalKit's rules on :func:`extract_answer`'s text: the box's content, else what follows the last
``</think>`` (VLMEvalKit's ``SPLIT_THINK`` keeps the same part), else the whole response.

The VLMEvalKit rules are those of ``vlmeval/utils/matching_util.py`` and ``vlmeval/dataset/utils/yorn.py`` as they
stood when the paper was written (after PR #1175 of Aug 2025, before PR #1552 of Jun 2026; see `extract_choice`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from staged_vlm_jax.rl.rewards.scores import choice_letter, last_boxed_content

_THINK_END = "</think>"

# --- options (VLMEvalKit vlmeval/utils/matching_util.py) -----------------------------------------------------------

# can_infer_option: a response containing one of these refused to answer; VLMEvalKit maps it to the non-option "Z".
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
# can_infer's answer "Z": no option (a refusal, or an LLM judge's "none of the options"), which no option letter
# (A..H) equals.
NO_OPTION = "Z"
# can_infer_option: these characters separate tokens, so "(B)", "B." and "**B**" all give the token "B".
_OPTION_TOKEN_SEPARATORS = re.compile(r"[.()\[\],:;!*#{}]")
# can_infer_option: the one option letter must occur among the response's last this-many tokens (PR #1175).
_OPTION_LETTER_WINDOW = 4
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")


def has_box(response: str) -> bool:
    r"""Whether the response boxed an answer (a closed last ``\boxed{}``): then its box is the answer, read by rule,
    and an LLM judge is never asked about it."""
    return last_boxed_content(response) is not None


def extract_answer(response: str) -> str:
    r"""The answer part of a response: the stripped content of the last ``\boxed{}``, else what follows the last
    ``</think>``, else the whole response, stripped.

    The box wins wherever it is (an unfinished response that boxed an answer while thinking still answered);
    ``\boxed{}`` follows `last_boxed_content` (the training reward's rule), so an unclosed last box is no box.
    """
    boxed = last_boxed_content(response)
    if boxed is not None:
        return boxed
    _, think_end, after = response.rpartition(_THINK_END)
    return (after if think_end else response).strip()


def _plain_text(text: str) -> str:
    r"""``text`` with ``\text{…}``-style wrappers unwrapped, whitespace collapsed and case folded, for comparing
    an answer with an option's text."""
    return " ".join(_LATEX_TEXT.sub(r"\1", text).split()).casefold()


def _boxed_choice(boxed: str, options: Mapping[str, str]) -> str | None:
    """The option a boxed answer names: as a letter (`choice_letter`: ``B``, ``(B)``, ``B.``, ``\\text{B}``,
    ``B: red``) or as exactly one option's whole text (case- and whitespace-insensitive); None otherwise."""
    letter = choice_letter(boxed)
    if letter in options:
        return letter
    answer = _plain_text(boxed)
    named = [key for key, text in options.items() if _plain_text(text) == answer]
    return named[0] if len(named) == 1 else None


def _infer_option_letter(answer: str, options: Mapping[str, str]) -> str | None:
    """VLMEvalKit ``can_infer_option``: an option letter standing alone as a token near the end of ``answer``.

    Returns the letter; `NO_OPTION` for a refusal (a `_REFUSALS` phrase, or no option letter but a lone token "Z"),
    which ends VLMEvalKit's search (the text rule is not tried); None when the rule is undecided. Tokens are
    ``answer`` split on whitespace after `_OPTION_TOKEN_SEPARATORS` become spaces; letters are case-sensitive, so
    the article "a" is no option. Exactly one distinct option letter must occur as a token, and its first
    occurrence must be among the last `_OPTION_LETTER_WINDOW` tokens: "The answer is B" gives B, "B, because the
    cup is red" does not (the letter is too early), "A or B" does not (two letters).
    """
    if any(refusal in answer for refusal in _REFUSALS):
        return NO_OPTION
    tokens = _OPTION_TOKEN_SEPARATORS.sub(" ", answer).split()
    letters = [letter for letter in options if letter in tokens]
    if len(letters) == 1:
        first = tokens.index(letters[0])
        return letters[0] if first >= len(tokens) - _OPTION_LETTER_WINDOW else None
    return NO_OPTION if not letters and NO_OPTION in tokens else None


def _infer_option_text(answer: str, options: Mapping[str, str]) -> str | None:
    """VLMEvalKit ``can_infer_text``: the one option whose text occurs in ``answer`` (lower-cased substrings).

    None if no option or several options occur ("black cat" contains both "cat" and "black cat"), or if the
    answer is longer than twice the options' total length (a long explanation mentions options it rejects).
    Matching is by substring, as in VLMEvalKit: the option "red" occurs in "bored".
    """
    answer = answer.lower()
    if len(answer) > 2 * sum(len(text) for text in options.values()):
        return None
    named = [letter for letter, text in options.items() if text.lower() in answer]
    return named[0] if len(named) == 1 else None


def infer_option(answer: str, options: Mapping[str, str]) -> str | None:
    """VLMEvalKit ``can_infer``: `_infer_option_letter`, and where that is undecided `_infer_option_text`. Returns an
    option letter, `NO_OPTION` for a refusal (or an answer that is the lone token "Z", as a judge answers when no
    option fits), or None when the rules cannot tell."""
    letter = _infer_option_letter(answer, options)
    return _infer_option_text(answer, options) if letter is None else letter


def extract_choice(response: str, options: Mapping[str, str]) -> str | None:
    r"""The letter of the option ``response`` answers, or None if the rules find no single option.

    ``options`` maps option letters (upper case, as VLMEvalKit's ``A``…``H`` columns) to their texts. In order:

    1. The last ``\boxed{}``: a letter of ``options`` (``B``, ``(B)``, ``B.``, ``b``, ``\text{B}``, ``B: red``),
       else exactly one option's whole text, ignoring case, whitespace and ``\text{}``-style wrappers.
    2. On :func:`extract_answer` (the box's content, else the text after ``</think>``), VLMEvalKit's ``can_infer``:
       ``can_infer_option`` (`_infer_option_letter`: one option letter standing alone as a token among the last
       four tokens; a refusal ends the search with None), then ``can_infer_text`` (`_infer_option_text`: exactly
       one option's text occurs in the answer, which is at most twice as long as all option texts together).

    VLMEvalKit PR #1552 (Jun 2026, after the paper) added an ``answer is [ABCD]`` regex to ``can_infer_option``;
    it is left out, so an early "The answer is B, because …" is unanswered here as it was for the paper.
    """
    boxed = last_boxed_content(response)
    if boxed is not None:
        letter = _boxed_choice(boxed, options)
        if letter is not None:
            return letter
    letter = infer_option(extract_answer(response), options)
    return None if letter == NO_OPTION else letter


# --- yes / no (VLMEvalKit vlmeval/dataset/utils/yorn.py YOrN_Extraction, vlmeval/smp/misc.py process_punctuation) ---

_PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD_OUTSIDE_NUMBER = re.compile(r"(?<!\d)\.(?!\d)")
# VLMEvalKit calls periodStrip.sub('', text, re.UNICODE): re.UNICODE (32) lands in sub's count argument.
_MAX_PERIODS_REMOVED = 32


def process_punctuation(text: str) -> str:
    """VLMEvalKit ``process_punctuation`` (from the VQA evaluation code), quirks included.

    Each mark in `_PUNCTUATION` is deleted if it touches a space somewhere in the given ``text`` (or if ``text``
    holds a comma between digits anywhere), else replaced by a space: "yes, it is" -> "yes it is" but "yes/no" ->
    "yes no". Then at most 32 periods not next to a digit are deleted ("no." -> "no", "2.5" stays). Apostrophes and
    colons stay: "no:" is not the word "no". Also the VQA answer normalisation's first step (`vqa`).
    """
    delete_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        touches_space = mark + " " in text or " " + mark in text  # VLMEvalKit tests the input, not ``out``
        out = out.replace(mark, "" if touches_space or delete_all else " ")
    return _PERIOD_OUTSIDE_NUMBER.sub("", out, count=_MAX_PERIODS_REMOVED)


def extract_yes_no(response: str) -> str | None:
    """VLMEvalKit's ``YOrN_Extraction`` of :func:`extract_answer` (response): "Yes", "No", or None (its "Unknown").

    The answer is lower-cased, punctuation handled by `process_punctuation`, and split on whitespace: "Yes" if the
    word "yes" occurs and "no" does not, "No" for the converse, None if both or neither occur ("yes or no",
    "there is not", "nope"). Only whole words count: "yes." and "(yes)" do, "yes:" and "no's" do not.
    """
    words = process_punctuation(extract_answer(response).lower()).split()
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes != has_no:
        return "Yes" if has_yes else "No"
    return None


# --- numbers --------------------------------------------------------------------------------------------------------

_NUMBER_REWRITES = (
    (re.compile(r"\{,\}"), ","),  # 1{,}234: LaTeX thousands separator
    (re.compile(r"\\[,!;: ]"), ""),  # thin spaces: 1\,234
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\\?\$"), ""),  # math delimiters and dollar signs alike
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°"), ""),  # degrees
)
_UNSIGNED = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
_SIGN = "[-+−]"
_UNIT_WORD = r"[A-Za-z]+(?:/[A-Za-z]+)*(?:\^\{?\d\}?|[²³])?"
_NUMBER = re.compile(
    rf"(?P<sign>{_SIGN})?\s*(?:"
    rf"\\frac\s*\{{\s*(?P<frac_num>{_SIGN}?\s*(?:{_UNSIGNED}))\s*\}}\s*\{{\s*(?P<frac_den>{_UNSIGNED})\s*\}}"
    rf"|(?P<num>{_UNSIGNED})\s*/\s*(?P<den>{_UNSIGNED})"
    rf"|(?P<value>{_UNSIGNED}))"
    rf"\s*%?\s*(?:{_UNIT_WORD}(?:\s+{_UNIT_WORD})?)?\.?"
)


def _to_float(number: str) -> float:
    """A matched number (thousands commas allowed, Unicode minus allowed) as a float."""
    return float(number.replace(",", "").replace("−", "-").replace(" ", ""))


def extract_number(text: str) -> float | None:
    r"""The number ``text`` consists of, or None if it is not one number (possibly with a unit).

    Accepted, around optional surrounding whitespace: a sign (``-``, ``+``, ``−``); digits with optional decimals
    (``3``, ``-2.5``, ``.5``) or with exact groups of three after commas (``1,234``, ``1{,}234``, ``1\,234``;
    ``1,23`` is no number); a fraction ``\frac{a}{b}`` (also ``\dfrac``, ``\tfrac``) or ``a/b``; then optionally
    ``%`` or ``\%`` (dropped, not scaled: ``3\%`` is 3), a unit of one or two words of letters, each with optional
    ``/`` parts and power (``12 cm``, ``5 m/s^2``, ``3 cm^{2}``, ``4 square units``), and a final period. ``$`` /
    ``\$`` and degree marks (``^\circ``, ``°``) are removed anywhere, and ``\text{}``-style wrappers unwrapped
    (``5\text{ cm}``).

    Rejected (None): several numbers (``3 or 4``), prose (``The answer is 5``, ``5 is the answer``: extract the
    answer first), expressions (``2\sqrt{3}``, ``1+2``), a zero denominator.
    """
    for pattern, replacement in _NUMBER_REWRITES:
        text = pattern.sub(replacement, text)
    match = _NUMBER.fullmatch(_LATEX_TEXT.sub(r"\1", text).strip())
    if match is None:
        return None
    sign = -1.0 if match["sign"] in ("-", "−") else 1.0
    if match["value"] is not None:
        return sign * _to_float(match["value"])
    numerator, denominator = match.group("frac_num", "frac_den") if match["frac_num"] else match.group("num", "den")
    if _to_float(denominator) == 0:
        return None
    return sign * _to_float(numerator) / _to_float(denominator)
