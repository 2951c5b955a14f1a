r"""Stage-1 perception MCQs from image captions: the paper's pipeline (UCSC-VLAA/VLM-CapCurriculum
``data_pipeline/``, commit d58a584) with its prompts, parsing and filter rule; `build_perception` runs its steps.

1. Generate (``generate_qa.py``): one four-option MCQ per caption from ``prompts/docci_mcq_generation.txt``
   (`MCQ_GENERATION_TEMPLATE`, filled by ``str.format(description=caption)``), greedy, at most 512 new tokens; the
   MCQ is the JSON of the reply's ```json fenced block (`parse_mcq`). The official script skips a reply without
   one or with invalid JSON; here such replies are counted by reason, and so is a wrong schema (options not exactly
   A-D as non-empty strings, an answer not one of A-D), on which the official later steps would fail or misgrade.
2. Filter (``filter_perception.py``): each filter model answers every MCQ from the image alone (a chat: the image,
   then ``"Please answer based on the image.\n"`` and the question block, `image_chat`) and from the caption alone
   (`caption_prompt`), greedy, at most 8 new tokens, the letter read by the official `extract_letter`. An MCQ is
   kept iff for every filter model the image answer is wrong (a letter, not the answer) and the caption answer is
   right (`filter_verdict`).
3. Write (``format_for_training.py``): the kept MCQs as EasyR1 rows — ``problem`` its template with the
   ``<image>`` placeholder (`schema.mcq_problem`), ``answer`` the letter, ``images`` the caption row's image path
   relative to the image folder (as the official ``image_path``), ``id`` the caption's id — plus provenance: the
   caption, question and options, the generator's name and reply, and each filter model's answers and replies.
   Unlike the official script, no train/val/test split by id hash: a run's config names the files it trains on.

Prompt rendering: the official scripts send the generation and caption-only prompts as raw text through vLLM's
``LLM.generate`` — no chat template, although the models are chat models — and the image-only prompt through
``LLM.chat``. A local generator does the same by default; ``chat_template=True`` sends the text prompts as a user
turn instead, which a small chat model may follow better. An endpoint speaks chat only and always gets a user turn.

Deviation: an MCQ whose image cannot be loaded is rejected (``unloadable_image``). The official image pass skips
it, and its filter then reads the missing answer as wrong (``None not in ("", gt)``), so it can keep an MCQ that
no model saw the image of.

The output folder holds ``build.json`` (the settings a rerun must share), ``mcqs.jsonl`` (step 1: one line per
caption), ``answers/<model>.jsonl`` (step 2: one line per MCQ per filter model) and ``perception.jsonl`` (step 3,
rewritten whole by every run). Steps 1 and 2 append per batch (`steps.resume`), so a rerun asks only for what is
missing; adding a filter model to a finished build asks that model only.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from etils import epath

from staged_vlm_jax.data.builders.generators import Chat, Generator, user_turn
from staged_vlm_jax.data.resumable import resume
from staged_vlm_jax.data.schema import DataError, ImageRef, RowLocation, mcq_problem
from staged_vlm_jax.paths import as_path, write_atomic

# ``prompts/docci_mcq_generation.txt`` verbatim; its ``{{`` ``}}`` are str.format escapes (the JSON braces).
MCQ_GENERATION_TEMPLATE = (
    "You are an assessment-item writer.\n"
    "Your job is to create a single multiple-choice question (MCQ) that can only be answered by "
    "carefully understanding the image described below.\n"
    "\n"
    "# Image description\n"
    "{description}\n"
    "\n"
    "# Your task\n"
    "1. Read the description attentively.\n"
    "2. Write one question that targets either\n"
    "    - a spatial relationship in the image (e.g., relative positions, directions, sizes, distances), "
    "or\n"
    "    - a fine detail visible in the scene (e.g., colors, numbers, small objects, text).\n"
    "3. Create four answer options (keys A, B, C, D) that all sound plausible but only one is correct.\n"
    "    - Make the distractors non-trivial: a casual glance at the description should not reveal the "
    "answer.\n"
    "    - Match the wording and specificity of the correct answer.\n"
    "4. Mark the correct option with the field answer, whose value is the single capital letter A / B / "
    "C / D.\n"
    "5. Return your result only as JSON inside a Markdown code block fenced with ```json — no additional "
    "text.\n"
    "\n"
    "# Output schema\n"
    "```json\n"
    "{{\n"
    '  "question": "string",\n'
    '  "options": {{\n'
    '    "A": "string",\n'
    '    "B": "string",\n'
    '    "C": "string",\n'
    '    "D": "string"\n'
    "  }},\n"
    '  "answer": "A|B|C|D"\n'
    "}}\n"
    "```\n"
    "\n"
    "# Example output\n"
    "```json\n"
    "{{\n"
    '  "question": "What is located directly to the left of the red bicycle in the image?",\n'
    '  "options": {{\n'
    '    "A": "A yellow fire hydrant",\n'
    '    "B": "A blue mailbox",\n'
    '    "C": "A green trash bin",\n'
    '    "D": "A small potted plant"\n'
    "  }},\n"
    '  "answer": "C"\n'
    "}}\n"
    "```\n"
    "\n"
    "# Reminder\n"
    "Output nothing except the single json-fenced code block containing your object, with double-quoted "
    "keys and values, and exactly four options labeled A-D.\n"
)

LETTERS = ("A", "B", "C", "D")
GENERATION_MAX_TOKENS = 512  # generate_qa.py --max-tokens (its --temperature 0: greedy)
FILTER_MAX_TOKENS = 8  # filter_perception.py --max-tokens (temperature 0)
IMAGE_INSTRUCTION = "Please answer based on the image.\n"
CAPTION_INSTRUCTION = "Please answer the question based only on the image caption below.\n"
_FENCED_JSON = re.compile(r"```json\s*(\{.*?\})\s*```", re.DOTALL)
_ANSWER_LETTER = re.compile(r"answer\s*[:\-]?\s*([ABCD])", re.IGNORECASE)
_LETTER = re.compile(r"\b([ABCD])\b")


class McqRejected(ValueError):
    """A generated reply that holds no usable MCQ; ``reason``: ``no_json_block``, ``invalid_json``, ``wrong_schema``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse_mcq(raw: str) -> dict[str, Any]:
    """The MCQ in a generator's reply, as ``{"question", "options": {"A".."D"}, "answer"}``.

    As ``generate_qa.py``'s ``parse_mcq``: the first ```json fenced block (its regex), parsed as JSON. Then the schema
    its prompt asks for, which the official scripts assume: a non-empty ``question``, ``options`` with exactly the keys
    A-D, each a non-empty string (returned in A-D order, the order every prompt lists them in), and ``answer`` one
    of A-D. Raises `McqRejected` with the reason.
    """
    match = _FENCED_JSON.search(raw)
    if match is None:
        raise McqRejected("no_json_block", "no ```json fenced block in the reply")
    try:
        mcq = json.loads(match.group(1))
    except json.JSONDecodeError as error:
        raise McqRejected("invalid_json", f"the fenced block is not valid JSON ({error})") from error
    question, options, answer = mcq.get("question"), mcq.get("options"), mcq.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise McqRejected("wrong_schema", f"question must be a non-empty string, got {question!r:.80}")
    if not isinstance(options, dict) or sorted(options) != list(LETTERS):
        raise McqRejected("wrong_schema", f"options must have exactly the keys A-D, got {options!r:.80}")
    if not all(isinstance(text, str) and text.strip() for text in options.values()):
        raise McqRejected("wrong_schema", f"every option must be a non-empty string, got {options!r:.80}")
    if answer not in LETTERS:
        raise McqRejected("wrong_schema", f"answer must be one of A-D, got {answer!r:.80}")
    return {"question": question, "options": {letter: options[letter] for letter in LETTERS}, "answer": answer}


def question_block(mcq: Mapping[str, Any]) -> str:
    """``filter_perception.py``'s ``build_question_block``: the question, ``"A. …"`` to ``"D. …"`` and the request."""
    lines = [f"Question: {mcq['question']}", "Options:"]
    lines += [f"{letter}. {mcq['options'][letter]}" for letter in LETTERS]
    lines.append("Please select the correct answer from the options above.")
    return "\n".join(lines)


def image_chat(image: ImageRef, mcq: Mapping[str, Any]) -> Chat:
    """``filter_perception.py``'s image-only conversation: one user turn, the image, then the instruction and MCQ."""
    content = [{"type": "image"}, {"type": "text", "text": IMAGE_INSTRUCTION + question_block(mcq)}]
    return Chat(({"role": "user", "content": content},), (image,))


def caption_prompt(caption: str, mcq: Mapping[str, Any]) -> str:
    """``filter_perception.py``'s caption-only prompt (raw text there, through ``LLM.generate``)."""
    return f"{CAPTION_INSTRUCTION}Image Caption: {caption}\n\n{question_block(mcq)}"


def extract_letter(text: str) -> str:
    """``filter_perception.py``'s ``extract_letter``, quirks included: the letter after ``answer`` (optionally ``:``
    or ``-``), case-insensitive, so ``"answer: c"`` gives ``C`` but ``"The answer is B"`` does not match that pattern;
    else the first standalone A-D of the upper-cased text (``"a cat"`` gives ``A``); else ``""``."""
    text = text.strip()
    match = _ANSWER_LETTER.search(text)
    if match:
        return match.group(1).upper()
    match = _LETTER.search(text.upper())
    return match.group(1) if match else ""


def filter_verdict(answer: str, image_letters: Sequence[str], caption_letters: Sequence[str]) -> str | None:
    """None to keep an MCQ with ground truth ``answer``, else why it is rejected, from each filter model's letter
    answered from the image and from the caption: ``filter_perception.py``'s rule, kept iff every image letter is
    ``not in ("", answer)`` and every caption letter ``== answer``. Reasons, in the order checked:
    ``answered_from_image`` (a model read the answer off the image), ``no_letter_from_image`` (a model's image reply
    named no letter, which the official rule does not count as wrong), ``wrong_from_caption``."""
    if answer in image_letters:
        return "answered_from_image"
    if "" in image_letters:
        return "no_letter_from_image"
    if any(letter != answer for letter in caption_letters):
        return "wrong_from_caption"
    return None


@dataclasses.dataclass(frozen=True)
class Caption:
    """One captioned image: its position among the captions, id, caption, image path as written and image."""

    index: int
    id: str
    text: str
    image_file: str
    image: ImageRef


def read_captions(path: epath.Path, image_root: epath.Path, *, caption_key: str, image_key: str, id_key: str,
                  limit: int | None = None) -> list[Caption]:  # fmt: skip
    """The first ``limit`` rows of a JSON-lines caption file (DOCCI's: ``description``, ``image_file``,
    ``example_id``), images relative to ``image_root``. An image field that is a list gives its first entry (as
    ``filter_perception.py``); a row without an id gets ``sample_{index:08d}`` (as ``format_for_training.py``).
    Raises `DataError` naming ``file:line`` for a line that is not a JSON object or lacks the caption or image."""
    captions: list[Caption] = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if limit is not None and len(captions) == limit:
                break
            if not line.strip():
                continue
            where = RowLocation(path, number)
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise DataError(where, "row", f"not valid JSON ({error})", reason="malformed_row") from error
            if not isinstance(record, dict):
                raise DataError(where, "row", f"expected a JSON object, got {type(record).__name__}",
                                reason="malformed_row")  # fmt: skip
            text, image = record.get(caption_key), record.get(image_key)
            if isinstance(image, list) and image:
                image = image[0]
            if not isinstance(text, str) or not text.strip():
                raise DataError(where, caption_key, f"missing or empty caption (keys: {sorted(record)}); "
                                "--caption-key names the caption field", reason="missing_caption")  # fmt: skip
            if not isinstance(image, str) or not image:
                raise DataError(where, image_key, f"missing or empty image path (keys: {sorted(record)}); "
                                "--image-key names the image field", reason="missing_image")  # fmt: skip
            index = len(captions)
            row_id = record.get(id_key)
            resolved = image_root / image
            captions.append(Caption(index, str(row_id) if row_id not in (None, "") else f"sample_{index:08d}", text,
                                    image, ImageRef(resolved, where, image_key, str(resolved))))  # fmt: skip
    return captions


@dataclasses.dataclass(frozen=True)
class PerceptionSpec:
    """A perception build: the captions (``caption_key`` / ``image_key`` / ``id_key`` fields, images under
    ``images``, the first ``limit``), the generator and filter models (names `build_perception`'s ``load`` knows),
    the output folder, ``batch_size`` prompts per generator call, and whether text prompts get the chat template."""

    captions: str
    images: str
    out: str
    generator: str
    filters: tuple[str, ...]
    caption_key: str = "description"
    image_key: str = "image_file"
    id_key: str = "example_id"
    limit: int | None = None
    batch_size: int = 8
    chat_template: bool = False


# What a rerun on the same output must share: the MCQs and answers on disk were made under them. (Adding filter
# models, a larger limit, another batch size or a moved image folder leave them valid.)
_FIXED_SETTINGS = ("captions", "caption_key", "image_key", "id_key", "generator", "chat_template")


@dataclasses.dataclass
class StepCount:
    """How many items a step was given, and why those it did not keep were rejected."""

    name: str
    total: int
    rejected: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def line(self) -> str:
        """``generate: kept 7 of 10; rejected 3 (no_json_block: 2, invalid_json: 1)``."""
        rejected = sum(self.rejected.values())
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.rejected.most_common())
        return f"{self.name}: kept {self.total - rejected} of {self.total}" + (
            f"; rejected {rejected} ({reasons})" if rejected else "")  # fmt: skip


def build_perception(
    spec: PerceptionSpec, load: Callable[[str], Generator], report: Callable[[str], None] = print
) -> None:
    """Runs (or resumes) the three steps of the module docstring into ``spec.out``, each model loaded by
    ``load(name)`` only when it has something to answer, and ``report``s a summary line as each step ends.

    Raises `DataError` for a bad caption row, and for an output folder built with other `_FIXED_SETTINGS`."""
    out = as_path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out / "build.json", {key: getattr(spec, key) for key in _FIXED_SETTINGS})
    captions = read_captions(as_path(spec.captions), as_path(spec.images), caption_key=spec.caption_key,
                             image_key=spec.image_key, id_key=spec.id_key, limit=spec.limit)  # fmt: skip
    text = user_turn if spec.chat_template else lambda prompt: prompt
    mcqs = _generate(captions, out / "mcqs.jsonl", lambda: load(spec.generator), spec.batch_size, text)
    report(StepCount("generate", len(captions), collections.Counter(row["reject"] for row in mcqs.values()
                                                                     if "reject" in row)).line())  # fmt: skip
    valid = [index for index, row in mcqs.items() if "mcq" in row]
    answers = {name: _filter_answers(captions, mcqs, valid, out / "answers" / f"{_slug(name)}.jsonl",
                                     lambda name=name: load(name), spec.batch_size, text)
               for name in spec.filters}  # fmt: skip
    filtered = StepCount(f"filter ({len(spec.filters)} models)", len(valid))
    rows = []
    for index in valid:
        per_model = {name: model_answers[index] for name, model_answers in answers.items()}
        reason = _reject_reason(mcqs[index]["mcq"]["answer"], list(per_model.values()))
        if reason is None:
            rows.append(training_row(captions[index], mcqs[index], spec.generator, per_model))
        else:
            filtered.rejected[reason] += 1
    report(filtered.line())
    path = out / "perception.jsonl"
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
    report(f"write: {len(rows)} rows to {path} (images relative to {spec.images})")


def _check_settings(path: epath.Path, settings: dict[str, Any]) -> None:
    if path.exists():
        before = json.loads(path.read_text())
        for key, value in settings.items():
            if before.get(key) != value:
                message = (f"this output was built with {before.get(key)!r}, not {value!r}; its MCQs and answers hold "
                           "only for that: use another --out")  # fmt: skip
                raise DataError(path, key, message, reason="settings_changed")
    write_atomic(path, json.dumps(settings, indent=1) + "\n")


def _generate(captions: Sequence[Caption], out: epath.Path, generator: Callable[[], Generator], batch_size: int,
              text: Callable[[str], str | Chat]) -> dict[int, dict[str, Any]]:  # fmt: skip
    """Step 1 (resumable): the generator's reply to every caption, with its MCQ or why it has none; ``generator()``
    is called once, when a caption is first missing."""
    generator = functools.cache(generator)

    def generate(batch: list[int]) -> list[dict[str, Any]]:
        prompts = [text(MCQ_GENERATION_TEMPLATE.format(description=captions[index].text)) for index in batch]
        replies = generator().complete(prompts, GENERATION_MAX_TOKENS)
        return [_mcq_row(index, raw) for index, raw in zip(batch, replies, strict=True)]

    return resume(out, range(len(captions)), batch_size, generate, "generate MCQs")


def _mcq_row(index: int, raw: str) -> dict[str, Any]:
    try:
        return {"index": index, "raw": raw, "mcq": parse_mcq(raw)}
    except McqRejected as rejected:
        return {"index": index, "raw": raw, "reject": rejected.reason, "why": str(rejected)}


def _filter_answers(captions: Sequence[Caption], mcqs: Mapping[int, dict[str, Any]], indices: Sequence[int],
                    out: epath.Path, generator: Callable[[], Generator], batch_size: int,
                    text: Callable[[str], str | Chat]) -> dict[int, dict[str, Any]]:  # fmt: skip
    """One filter model's image-only and caption-only answers to the MCQs at ``indices`` (resumable). An image that
    cannot be loaded is recorded as ``image_error`` and not asked about. ``generator()`` is called once, when needed."""
    generator = functools.cache(generator)

    def answer(batch: list[int]) -> list[dict[str, Any]]:
        rows, usable = {}, []
        for index in batch:
            try:
                captions[index].image.load()
            except DataError as error:
                rows[index] = {"index": index, "image_error": str(error)}
            else:
                usable.append(index)
        if usable:
            model = generator()
            from_image = model.complete([image_chat(captions[i].image, mcqs[i]["mcq"]) for i in usable],
                                        FILTER_MAX_TOKENS)  # fmt: skip
            from_caption = model.complete([text(caption_prompt(captions[i].text, mcqs[i]["mcq"])) for i in usable],
                                          FILTER_MAX_TOKENS)  # fmt: skip
            for index, image_raw, caption_raw in zip(usable, from_image, from_caption, strict=True):
                rows[index] = {"index": index, "image_answer": extract_letter(image_raw), "image_raw": image_raw,
                               "caption_answer": extract_letter(caption_raw), "caption_raw": caption_raw}  # fmt: skip
        return [rows[index] for index in batch]

    return resume(out, indices, batch_size, answer, f"filter {out.stem}")


def _reject_reason(answer: str, rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Why an MCQ is rejected given each filter model's answers row (None: kept)."""
    if any("image_error" in row for row in rows):
        return "unloadable_image"
    return filter_verdict(answer, [row["image_answer"] for row in rows], [row["caption_answer"] for row in rows])


def training_row(caption: Caption, generated: Mapping[str, Any], generator: str,
                 answers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """A kept MCQ as an EasyR1 row (``format_for_training.py``'s prompt, its question stripped) with provenance."""
    mcq = generated["mcq"]
    return {
        "id": caption.id,
        "problem": mcq_problem(mcq["question"].strip(), mcq["options"]),
        "answer": mcq["answer"],
        "images": [caption.image_file],
        "caption": caption.text,
        "question": mcq["question"],
        "options": mcq["options"],
        "generator": {"model": generator, "raw": generated["raw"]},
        "filters": [
            {"model": name, **{key: value for key, value in row.items() if key != "index"}}
            for name, row in answers.items()
        ],  # fmt: skip
    }


def _slug(name: str) -> str:
    """A model name (a path, a served name) as a file name."""
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "model"
