r"""The benchmarks' file loaders and prompts: for each benchmark, a small file of every format it reads (VLMEvalKit
TSV, HF parquet) written here, loaded, turned into questions and scored.

Each expected prompt is derived by hand from VLMEvalKit's ``build_prompt`` for the dataset (named in the test):
images first, so the text is one ``<image>`` per image followed by the prompt text. The fixture rows imitate the
official files' columns; their question texts are illustrative, the prompt rules are what is checked.
"""

from __future__ import annotations

import base64
import csv
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.parquet
import pytest
from etils import epath
from PIL import Image

from staged_vlm_jax.data.schema import DataError, RowLocation
from staged_vlm_jax.eval import benchmarks
from staged_vlm_jax.eval.benchmarks import Benchmark, Question

# --- Fixture writers ------------------------------------------------------------------------------------------------

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def png(color: tuple[int, int, int]) -> bytes:
    """A 4x3 single-colour PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(color: tuple[int, int, int]) -> str:
    return base64.b64encode(png(color)).decode("ascii")


def write_tsv(path: Path, rows: list[dict[str, Any]]) -> epath.Path:
    """A VLMEvalKit-style TSV: a header of every row's keys (first seen first), a missing key an empty cell; cells
    holding newlines or tabs are quoted, as pandas' ``to_csv(sep="\\t")`` writes them."""
    header = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[row.get(key, "") for key in header] for row in rows])
    return epath.Path(path)


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> epath.Path:
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return epath.Path(path)


def struct(color: tuple[int, int, int], name: str) -> dict[str, Any]:
    """An HF ``datasets`` Image cell."""
    return {"bytes": png(color), "path": name}


def load_and_ask(name: str, path: epath.Path) -> tuple[list[dict[str, Any]], list[Question]]:
    benchmark = benchmarks.get(name)
    records = benchmark.load(path)
    questions = [benchmark.question(record, RowLocation(path, row)) for row, record in enumerate(records)]
    for question in questions:  # every image decodes, as the 4x3 RGB it was written as
        assert [image.load().shape for image in question.images] == [(3, 4, 3)] * len(question.images)
    return records, questions


def scored(name: str, records: list[dict[str, Any]], predictions: list[str]) -> dict[str, float]:
    answered = [{**record, "prediction": prediction} for record, prediction in zip(records, predictions, strict=True)]
    return benchmarks.get(name).score(answered)


def boxed(answer: str) -> str:
    return f"<think>Looking at the figure.</think> The answer is \\boxed{{{answer}}}."


# --- Fixture rows, per benchmark (VLMEvalKit TSV columns) -----------------------------------------------------------

VISTA_CHOICE_QUERY = (
    "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
    "Question: What fraction of the shape is blue?\nChoices:\n(A) 3/11\n(B) 8/11\n(C) 6/11\n(D) 3/5"
)
VISTA_INTEGER_QUERY = (
    "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at "
    "the end.\nQuestion: Which number is missing?"
)
VISTA_FLOAT_QUERY = (
    "Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final "
    "value, e.g., 1.2, 1.3, 1.4, at the end.\nQuestion: What is the fraction of females facing the camera?"
)


def mathvista_tsv_rows() -> list[dict[str, Any]]:
    """MathVista_MINI.tsv: ``question`` is the official query; row 1's image cell names row 0's index."""
    common = {"unit": "", "precision": "", "choices": "", "answer_option": ""}
    return [
        {
            **common,
            "index": "1",
            "image": b64(RED),
            "question": VISTA_CHOICE_QUERY,
            "answer": "8/11",
            "answer_option": "B",
            "choices": "['3/11', '8/11', '6/11', '3/5']",
            "question_type": "multi_choice",
            "answer_type": "text",
        },
        {
            **common,
            "index": "2",
            "image": "1",
            "question": VISTA_INTEGER_QUERY,
            "answer": "14",
            "question_type": "free_form",
            "answer_type": "integer",
        },
        {
            **common,
            "index": "3",
            "image": b64(BLUE),
            "question": VISTA_FLOAT_QUERY,
            "answer": "0.6",
            "precision": "1.0",
            "question_type": "free_form",
            "answer_type": "float",
        },
    ]


VISION_CHOICE_QUESTION = (
    "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, E, at the end.\n"
    "Question: Which cube can be folded from the net?\nChoices:\n(A) A\n(B) B\n(C) C"
)
VISION_FREE_QUESTION = (
    "Hint: Please answer the question and provide the final answer at the end.\nQuestion: How many triangles are there?"
)


def mathvision_tsv_rows() -> list[dict[str, Any]]:
    """MathVision_MINI.tsv: ``choices`` the list's repr (``"[]"`` for free-form)."""
    return [
        {"index": "1", "image": b64(RED), "question": VISION_CHOICE_QUESTION, "answer": "B"}
        | {"choices": "['A', 'B', 'C']", "category": "solid geometry", "level": "3"},
        {"index": "2", "image": b64(GREEN), "question": VISION_FREE_QUESTION, "answer": "7"}
        | {"choices": "[]", "category": "counting", "level": "1"},
    ]


VERSE_CHOICE_BARE = (
    "As shown in the figure, AB ∥ CD and angle 1 = 50°; angle 2 is ()\nChoices:\nA:40°\nB:50°\nC:130°\nD:150°"
)
VERSE_CHOICE_QUERY = (
    "Please directly answer the question and provide the correct option letter, e.g., A, B, C, D.\nQuestion: "
    + VERSE_CHOICE_BARE
)
VERSE_FREE_BARE = "Find the length of AB."
VERSE_FREE_QUERY = (
    "Please directly answer the question and provide the final value, e.g., 1, 2.5, 300.\nQuestion: " + VERSE_FREE_BARE
)


def mathverse_tsv_rows() -> list[dict[str, Any]]:
    """MathVerse_MINI_Vision_Intensive.tsv: ``question`` is the direct-answer query (HF's ``query_wo``)."""
    common = {"problem_version": "Vision Intensive", "query_cot": "", "question_for_eval": ""}
    return [
        {**common, "index": "1", "image": b64(RED), "question": VERSE_CHOICE_QUERY, "answer": "C"}
        | {"question_type": "multi-choice"},
        {**common, "index": "2", "image": b64(GREEN), "question": VERSE_FREE_QUERY, "answer": "5"}
        | {"question_type": "free-form"},
    ]


def wemath_tsv_rows() -> list[dict[str, Any]]:
    """WeMath.tsv: one two-step problem (two sub-questions and the composite), options in columns A..E."""
    common = {"ID": "1", "split": "testmini", "knowledge concept": "Area of rectangles"}
    return [
        {**common, "index": "1", "image": b64(RED), "question": "What is the area of rectangle A?"}
        | {"A": "6", "B": "8", "C": "12", "D": "", "E": "No correct answer", "key": "2steps_1", "answer": "A"},
        {**common, "index": "2", "image": b64(GREEN), "question": "What is the area of rectangle B?"}
        | {"A": "6", "B": "8", "C": "", "D": "", "E": "", "key": "2steps_2", "answer": "B"},
        {**common, "index": "3", "image": "1", "question": "What is the total area of A and B?"}
        | {"A": "12", "B": "14", "C": "16", "D": "", "E": "", "key": "2steps_multi", "answer": "B"},
    ]


def a_okvqa_tsv_rows() -> list[dict[str, Any]]:
    return [
        {"index": "0", "question": "What is the man holding?", "A": "a bat", "B": "a racket", "C": "a ball"}
        | {"D": "a kite", "answer": "B", "image": b64(RED)},
        {"index": "1", "question": "Where is the cat sitting?", "A": "sofa", "B": "floor", "C": "table"}
        | {"D": "bed", "answer": "D", "image": b64(GREEN)},
    ]


def mmstar_tsv_rows() -> list[dict[str, Any]]:
    """MMStar.tsv with a ``hint`` column, filled in row 0 only."""
    return [
        {"index": "0", "question": "Which object is closest to the camera?", "hint": "The photo shows a street."}
        | {"A": "a car", "B": "a tree", "C": "a sign", "D": "a bus", "answer": "A", "category": "coarse perception"}
        | {"l2_category": "image scene", "image": b64(RED)},
        {"index": "1", "question": "How many birds are there?", "hint": ""}
        | {"A": "1", "B": "2", "C": "3", "D": "4", "answer": "C", "category": "math", "l2_category": "numeric"}
        | {"image": b64(BLUE)},
    ]


def realworldqa_tsv_rows() -> list[dict[str, Any]]:
    """RealWorldQA.tsv: an MCQ row with three options, and an open question (no options)."""
    return [
        {"index": "0", "question": "Which lane is the car in?", "A": "left", "B": "middle", "C": "right", "D": ""}
        | {"answer": "C", "image": b64(RED)},
        {"index": "1", "question": "How many cars are there?", "A": "", "B": "", "C": "", "D": "", "answer": "2"}
        | {"image": b64(GREEN)},
    ]


def pope_tsv_rows() -> list[dict[str, Any]]:
    """POPE.tsv: a question of two splits in one row (category "adversarial,popular"); row 1 reuses row 0's image."""
    return [
        {"index": "0", "question": "Is there a dog in the image?", "answer": "yes"}
        | {"category": "adversarial,popular", "image": b64(RED)},
        {"index": "1", "question": "Is there a cat in the image?", "answer": "no", "category": "random", "image": "0"},
    ]


TSV_ROWS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "mathvista_mini": mathvista_tsv_rows,
    "mathvision_mini": mathvision_tsv_rows,
    "mathverse_mini_vi": mathverse_tsv_rows,
    "wemath": wemath_tsv_rows,
    "a_okvqa": a_okvqa_tsv_rows,
    "realworldqa": realworldqa_tsv_rows,
    "mmstar": mmstar_tsv_rows,
    "pope": pope_tsv_rows,
}

# ImageMCQDataset.build_prompt's closing line (vlmeval/dataset/image_mcq.py), with its trailing space.
SELECT = "Please select the correct answer from the options above. \n"


# --- Visual math ------------------------------------------------------------------------------------------------


def test_mathvista_tsv(tmp_path):
    path = write_tsv(tmp_path / "MathVista_MINI.tsv", mathvista_tsv_rows())
    records, questions = load_and_ask("mathvista_mini", path)
    # ImageBaseDataset.build_prompt (MathVista keeps it): [image, question], the TSV's question verbatim.
    assert [q.text for q in questions] == [
        "<image>" + VISTA_CHOICE_QUERY,
        "<image>" + VISTA_INTEGER_QUERY,
        "<image>" + VISTA_FLOAT_QUERY,
    ]
    assert records[0]["choices"] == "['3/11', '8/11', '6/11', '3/5']"  # the file's own fields, as text
    assert questions[1].images[0].source == png(RED)  # image cell "1": row 0's image
    assert (questions[0].images[0].where, questions[0].images[0].field) == (RowLocation(path, 0), "image")
    # B -> "8/11" right; 15 != 14 wrong; round(0.6, 1) right (precision "1.0", the TSV's text): 2 of 3.
    scores = scored("mathvista_mini", records, [boxed("B"), boxed("15"), boxed("0.6")])
    assert scores["accuracy"] == pytest.approx(200 / 3)
    assert (scores["accuracy/multi_choice"], scores["accuracy/integer"], scores["count"]) == (100.0, 0.0, 3)


def test_mathvista_parquet(tmp_path):
    """HF AI4Math/MathVista testmini: the prompt is ``query`` (what the TSV's question holds), the image
    ``decoded_image``."""
    base = {"unit": None, "metadata": {"source": "x"}}
    rows = [
        {**base, "pid": "1", "question": "What fraction of the shape is blue?", "image": "images/1.jpg"}
        | {"decoded_image": struct(RED, "1.jpg"), "choices": ["3/11", "8/11", "6/11", "3/5"], "precision": None}
        | {"answer": "8/11", "question_type": "multi_choice", "answer_type": "text", "query": VISTA_CHOICE_QUERY},
        {**base, "pid": "2", "question": "What is the fraction of females facing the camera?"}
        | {"image": "images/2.jpg", "decoded_image": struct(GREEN, "2.jpg"), "choices": None, "precision": 1.0}
        | {"answer": "0.6", "question_type": "free_form", "answer_type": "float", "query": VISTA_FLOAT_QUERY},
    ]
    path = write_parquet(tmp_path / "testmini.parquet", rows)
    records, questions = load_and_ask("mathvista_mini", path)
    assert [q.text for q in questions] == ["<image>" + VISTA_CHOICE_QUERY, "<image>" + VISTA_FLOAT_QUERY]
    assert (questions[0].images[0].field, questions[0].images[0].name) == ("decoded_image", "1.jpg")
    assert records[0]["choices"] == ["3/11", "8/11", "6/11", "3/5"] and records[1]["precision"] == 1.0
    # "\boxed{8/11}" names choice B; 0.7 != 0.6: 1 of 2.
    assert scored("mathvista_mini", records, [boxed("8/11"), boxed("0.7")])["accuracy"] == 50.0


def test_mathvision_tsv(tmp_path):
    path = write_tsv(tmp_path / "MathVision_MINI.tsv", mathvision_tsv_rows())
    records, questions = load_and_ask("mathvision_mini", path)
    # ImageBaseDataset.build_prompt (MathVision keeps it): [image, question verbatim].
    assert [q.text for q in questions] == ["<image>" + VISION_CHOICE_QUESTION, "<image>" + VISION_FREE_QUESTION]
    # B right; 8 != 7 wrong.
    scores = scored("mathvision_mini", records, [boxed("B"), boxed("8")])
    assert (scores["accuracy"], scores["accuracy/multi_choice"], scores["accuracy/free_form"]) == (50.0, 100.0, 0.0)


def test_mathverse_tsv(tmp_path):
    path = write_tsv(tmp_path / "MathVerse_MINI_Vision_Intensive.tsv", mathverse_tsv_rows())
    records, questions = load_and_ask("mathverse_mini_vi", path)
    # MathVerse.build_prompt (vlmeval/dataset/image_vqa.py, no "cot" in the name): [image, line['question']].
    assert [q.text for q in questions] == ["<image>" + VERSE_CHOICE_QUERY, "<image>" + VERSE_FREE_QUERY]
    # C (130°) right; 5 right.
    assert scored("mathverse_mini_vi", records, [boxed("C"), boxed("5")])["accuracy"] == 100.0


def test_mathverse_tsv_of_another_version_is_an_error(tmp_path):
    rows = mathverse_tsv_rows()
    rows[1]["problem_version"] = "Text Dominant"
    path = write_tsv(tmp_path / "MathVerse_MINI.tsv", rows)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:1: problem_version: is 'Text Dominant'"):
        benchmarks.get("mathverse_mini_vi").load(path)


def test_mathverse_parquet_reads_the_vision_intensive_rows(tmp_path):
    """HF AI4Math/MathVerse testmini holds every version: only the Vision Intensive rows are read, and their prompt
    is ``query_wo`` (the TSV's question); ``question`` (bare, with its Choices block) stays for the scorer."""

    def row(version: str, question: str, query: str, answer: str, kind: str, color) -> dict[str, Any]:
        return (
            {"sample_index": "1", "problem_index": "1", "problem_version": version, "question": question}
            | {"image": struct(color, "1.png"), "answer": answer, "question_type": kind, "query_wo": query}
            | {"query_cot": "", "question_for_eval": question, "metadata": {"subject": "plane geometry"}}
        )

    rows = [
        row("Vision Intensive", VERSE_CHOICE_BARE, VERSE_CHOICE_QUERY, "C", "multi-choice", RED),
        row("Text Dominant", "Text only: " + VERSE_FREE_BARE, "unused", "5", "free-form", GREEN),
        row("Vision Intensive", VERSE_FREE_BARE, VERSE_FREE_QUERY, "5", "free-form", BLUE),
    ]
    path = write_parquet(tmp_path / "testmini.parquet", rows)
    records, questions = load_and_ask("mathverse_mini_vi", path)
    assert [q.text for q in questions] == ["<image>" + VERSE_CHOICE_QUERY, "<image>" + VERSE_FREE_QUERY]
    assert [record["question"] for record in records] == [VERSE_CHOICE_BARE, VERSE_FREE_BARE]
    # B (50°) wrong; 5 right.
    assert scored("mathverse_mini_vi", records, [boxed("B"), boxed("5")])["accuracy"] == 50.0


def test_wemath_tsv(tmp_path):
    path = write_tsv(tmp_path / "WeMath.tsv", wemath_tsv_rows())
    records, questions = load_and_ask("wemath", path)
    # WeMath.build_prompt (vlmeval/dataset/image_mcq.py): "Question: {q}\n", "Options:\n", "{letter}. {text}\n" for
    # each non-NaN column A..Z (blank D skipped), no closing instruction (dataset "WeMath", not "_COT").
    assert [q.text for q in questions] == [
        "<image>Question: What is the area of rectangle A?\nOptions:\nA. 6\nB. 8\nC. 12\nE. No correct answer\n",
        "<image>Question: What is the area of rectangle B?\nOptions:\nA. 6\nB. 8\n",
        "<image>Question: What is the total area of A and B?\nOptions:\nA. 12\nB. 14\nC. 16\n",
    ]
    assert questions[2].images[0].source == png(RED)  # image cell "1": row 0's image
    # Both sub-questions and the composite right: complete mastery, Score (Strict) 100.
    scores = scored("wemath", records, [boxed("A"), boxed("B"), boxed("B")])
    assert (scores["score_strict"], scores["CM_strict"], scores["count"]) == (100.0, 100.0, 1.0)


# --- Perception -----------------------------------------------------------------------------------------------------


def test_a_okvqa_tsv(tmp_path):
    path = write_tsv(tmp_path / "A-OKVQA.tsv", a_okvqa_tsv_rows())
    records, questions = load_and_ask("a_okvqa", path)
    # ImageMCQDataset.build_prompt: no hint column, "Question: ...\n", "Options:\n", "A. ...\n"..., the instruction.
    assert questions[0].text == (
        "<image>Question: What is the man holding?\nOptions:\nA. a bat\nB. a racket\nC. a ball\nD. a kite\n" + SELECT
    )
    assert questions[1].text == (
        "<image>Question: Where is the cat sitting?\nOptions:\nA. sofa\nB. floor\nC. table\nD. bed\n" + SELECT
    )
    # B right; "sofa" names A, not D: 1 of 2.
    assert scored("a_okvqa", records, [boxed("B"), boxed("sofa")]) == {"accuracy": 50.0, "count": 2}


def test_mmstar_tsv_with_hints(tmp_path):
    path = write_tsv(tmp_path / "MMStar.tsv", mmstar_tsv_rows())
    records, questions = load_and_ask("mmstar", path)
    # ImageMCQDataset.build_prompt: "Hint: {hint}\n" first where the hint cell is filled (pandas: an empty cell is NaN).
    assert [q.text for q in questions] == [
        "<image>Hint: The photo shows a street.\nQuestion: Which object is closest to the camera?\n"
        "Options:\nA. a car\nB. a tree\nC. a sign\nD. a bus\n" + SELECT,
        "<image>Question: How many birds are there?\nOptions:\nA. 1\nB. 2\nC. 3\nD. 4\n" + SELECT,
    ]
    # A right (coarse perception); B wrong (math).
    assert scored("mmstar", records, [boxed("A"), boxed("B")]) == {
        "accuracy": 50.0,
        "count": 2,
        "accuracy/coarse perception": 100.0,
        "accuracy/math": 0.0,
    }


def test_realworldqa_tsv_with_an_open_question(tmp_path):
    path = write_tsv(tmp_path / "RealWorldQA.tsv", realworldqa_tsv_rows())
    records, questions = load_and_ask("realworldqa", path)
    # ImageMCQDataset.build_prompt: blank D is no option; a row without options ends after "Question: ...\n".
    assert [q.text for q in questions] == [
        "<image>Question: Which lane is the car in?\nOptions:\nA. left\nB. middle\nC. right\n" + SELECT,
        "<image>Question: How many cars are there?\n",
    ]
    # C right; "two" -> "2" right (lmms-eval's number words).
    assert scored("realworldqa", records, [boxed("C"), boxed("two")]) == {"accuracy": 100.0, "count": 2}


def test_several_images_in_one_cell(tmp_path):
    """A cell ``"['<b64>', '<b64>']"`` is a list of images (VLMEvalKit's ``toliststr``): one ``<image>`` each."""
    rows = mmstar_tsv_rows()
    rows[1]["image"] = str([b64(GREEN), b64(BLUE)])
    path = write_tsv(tmp_path / "MMStar.tsv", rows)
    _, questions = load_and_ask("mmstar", path)
    assert questions[1].text.startswith("<image><image>Question: How many birds are there?\n")
    assert [(image.field, image.source) for image in questions[1].images] == [
        ("image[0]", png(GREEN)),
        ("image[1]", png(BLUE)),
    ]


def test_pope_tsv(tmp_path):
    path = write_tsv(tmp_path / "POPE.tsv", pope_tsv_rows())
    records, questions = load_and_ask("pope", path)
    # ImageYORNDataset.build_prompt -> ImageBaseDataset.build_prompt for POPE: [image, question verbatim].
    assert [q.text for q in questions] == ["<image>Is there a dog in the image?", "<image>Is there a cat in the image?"]
    assert questions[1].images[0].source == png(RED)  # image cell "0": row 0's image
    # yes/yes right (counted in adversarial and popular); no question answered "Yes" wrong.
    scores = scored("pope", records, ["Yes, there is a dog.", "Yes"])
    assert (scores["accuracy"], scores["accuracy/random"], scores["count/adversarial"]) == (
        pytest.approx(200 / 3),
        0,
        1,
    )


def test_pope_parquet(tmp_path):
    """HF lmms-lab/POPE: one row per split; the prompt is the question, as from the TSV."""
    rows = [
        {"id": "0", "question_id": "1", "question": "Is there a dog in the image?", "answer": "yes"}
        | {"image_source": "COCO_val2014_000000000001", "image": struct(RED, "1.jpg"), "category": "adversarial"},
        {"id": "1", "question_id": "1", "question": "Is there a dog in the image?", "answer": "yes"}
        | {"image_source": "COCO_val2014_000000000001", "image": struct(RED, "1.jpg"), "category": "popular"},
        {"id": "2", "question_id": "2", "question": "Is there a cat in the image?", "answer": "no"}
        | {"image_source": "COCO_val2014_000000000002", "image": struct(GREEN, "2.jpg"), "category": "random"},
    ]
    path = write_parquet(tmp_path / "test.parquet", rows)
    records, questions = load_and_ask("pope", path)
    assert [q.text for q in questions] == ["<image>Is there a dog in the image?"] * 2 + [
        "<image>Is there a cat in the image?"
    ]
    # The same predictions as the TSV test score the same: 2 of 3 pooled, random 0.
    scores = scored("pope", records, ["Yes, there is a dog.", "Yes, there is a dog.", "Yes"])
    assert (scores["accuracy"], scores["accuracy/random"], scores["count/adversarial"]) == (
        pytest.approx(200 / 3),
        0,
        1,
    )


def test_struct_without_bytes_reads_its_path_beside_the_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "1.png").write_bytes(png(BLUE))
    rows = [
        {"question": "Is there a dog in the image?", "answer": "yes", "image": {"bytes": None, "path": "images/1.png"}}
    ]
    path = write_parquet(tmp_path / "test.parquet", rows)
    _, questions = load_and_ask("pope", path)
    assert questions[0].images[0].source == path.parent / "images" / "1.png"


# --- Malformed files --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TSV_ROWS))
@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("bm90IGJhc2U2NA==!", "not valid base64"),  # a character outside base64's alphabet
        (base64.b64encode(b"not an image at all").decode(), "cannot decode image '<base64 image>'"),
    ],
)
def test_undecodable_tsv_image_names_file_and_row(tmp_path, name, cell, message):
    rows = TSV_ROWS[name]()
    rows[1]["image"] = cell
    path = write_tsv(tmp_path / "bench.tsv", rows)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:1: image: {re.escape(message)}"):
        benchmarks.get(name).load(path)


def test_undecodable_parquet_image_names_file_and_row(tmp_path):
    rows = [
        {"question": "Is there a dog in the image?", "answer": "yes", "image": struct(RED, "1.jpg")},
        {
            "question": "Is there a cat in the image?",
            "answer": "no",
            "image": {"bytes": b"\x89PNG broken", "path": "2"},
        },
    ]
    path = write_parquet(tmp_path / "test.parquet", rows)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:1: image: cannot decode image '2'") as error:
        benchmarks.get("pope").load(path)
    assert error.value.reason == "corrupt_image"


@pytest.mark.parametrize(
    ("name", "rows", "column"),
    [
        ("mathvista_mini", mathvista_tsv_rows, "answer_type"),
        ("mathvision_mini", mathvision_tsv_rows, "choices"),
        ("mathverse_mini_vi", mathverse_tsv_rows, "question_type"),
        ("wemath", wemath_tsv_rows, "key"),
    ],
)
def test_missing_tsv_column_names_file_and_row(tmp_path, name, rows, column):
    path = write_tsv(tmp_path / "bench.tsv", [{k: v for k, v in row.items() if k != column} for row in rows()])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:0: {column}: missing") as error:
        benchmarks.get(name).load(path)
    assert error.value.reason == "missing_field"


def test_missing_parquet_column_names_file_and_row(tmp_path):
    rows = [{"question": "Is there a dog in the image?", "image": struct(RED, "1.jpg"), "category": "random"}]
    path = write_parquet(tmp_path / "test.parquet", rows)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:0: answer: missing"):
        benchmarks.get("pope").load(path)


def test_tsv_without_a_basic_column_or_with_an_empty_cell(tmp_path):
    """``question``, ``answer`` and ``image`` are checked in the TSV's header (`sources` reader): the file is named;
    an empty required cell names its row."""
    path = write_tsv(
        tmp_path / "MMStar.tsv", [{k: v for k, v in row.items() if k != "answer"} for row in mmstar_tsv_rows()]
    )
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}: header: VLMEvalKit TSV lacks column\(s\) \['answer'\]"
    ):
        benchmarks.get("mmstar").load(path)
    rows = a_okvqa_tsv_rows()
    rows[1]["question"] = ""
    path = write_tsv(tmp_path / "A-OKVQA.tsv", rows)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:1: question: empty"):
        benchmarks.get("a_okvqa").load(path)


def test_unreadable_layouts_are_data_errors(tmp_path):
    path = write_parquet(tmp_path / "testmini.parquet", [{"question": "q", "answer": "B", "image": struct(RED, "1")}])
    with pytest.raises(DataError, match=r"extension: mathvision_mini reads \.tsv files, not '\.parquet'"):
        benchmarks.get("mathvision_mini").load(path)
    path = write_tsv(tmp_path / "POPE.tsv", pope_tsv_rows())
    # Columns: index, question, answer, category, image; this row has one cell more.
    path.write_text(path.read_text() + "2\tIs it?\tyes\trandom\t0\textra cell\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: row: has 1 cell\(s\) more than the header"):
        benchmarks.get("pope").load(path)
    path = epath.Path(tmp_path / "empty.tsv")
    path.write_text("index\tquestion\tanswer\timage\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: rows: no pope rows"):
        benchmarks.get("pope").load(path)


def test_load_and_question_are_required():
    with pytest.raises(TypeError, match="load"):
        Benchmark(name="x", score=lambda records: {})  # type: ignore[call-arg]
