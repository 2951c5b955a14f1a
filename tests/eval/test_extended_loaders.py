r"""The extended suite's file loaders and prompts: a small VLMEvalKit TSV per benchmark, loaded, asked and scored, and a
malformed one failing with a ``file:row`` `DataError`.

The expected prompts follow VLMEvalKit's ``build_prompt`` for each dataset (named in the test): images first, one
``<image>`` each, then the text. The fixture rows imitate the TSVs' columns (stated in each module's docstring).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from staged_vlm_jax.data.schema import DataError
from staged_vlm_jax.eval import benchmarks
from tests.eval.test_loaders import BLUE, GREEN, RED, b64, boxed, load_and_ask, scored, write_tsv

SELECT = "Please select the correct answer from the options above. \n"
VQA = "\nAnswer the question using a single word or phrase."


def expect_error(name: str, path, row: int, field: str, message: str) -> None:
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:{row}: {field}: {message}"):
        benchmarks.get(name).load(path)


# --- DynaMath ---------------------------------------------------------------------------------------------------


def dynamath_rows() -> list[dict[str, Any]]:
    common = {"subject": "plane geometry", "knowledge_level": "high school"}
    return [
        {"index": "0", "image": b64(RED), "question": "Find the area.", "answer": "3.897", "answer_type": "float",
         "qid": "18", "varid": "1", **common},
        {"index": "501", "image": b64(GREEN), "question": "Is it convex? Choices: (A) Yes (B) No", "answer": "A",
         "answer_type": "multiple choice", "qid": "18", "varid": "2", **common},
    ]  # fmt: skip


DYNAMATH_GUIDE = (
    "\n## Answer Instruction Please provide an answer to the question outlined above. Your response should adhere to "
    "the following JSON format, which includes two keys: 'solution' and 'short answer'. The 'solution' key can "
    "contain detailed steps needed to solve the question, and the 'short answer' key should provide a concise "
    "response. {}\n\nExample of expected JSON response format:\n\n"
    '{{\n    "solution": "[Detailed step-by-step explanation]",\n    "short answer": "[Concise Answer]"\n}}'
)


def test_dynamath_tsv(tmp_path):
    path = write_tsv(tmp_path / "DynaMath.tsv", dynamath_rows())
    records, questions = load_and_ask("dynamath", path)
    # Dynamath.build_prompt: [image, "## Question\n {question}" + GUIDE with the answer type's instruction + example].
    float_instruction = (
        "Format the answer as a three-digit floating-point number and provide it in the 'short answer' key."
    )
    choice_instruction = (
        "Provide the corresponing choice option in the 'short answer' key, such as 'A', 'B', 'C', or 'D'."
    )
    assert [q.text for q in questions] == [
        "<image>## Question\n Find the area." + DYNAMATH_GUIDE.format(float_instruction),
        "<image>## Question\n Is it convex? Choices: (A) Yes (B) No" + DYNAMATH_GUIDE.format(choice_instruction),
    ]
    # 3.897 right, B wrong: average 50, worst case (one seed) 0.
    scores = scored("dynamath", records, [boxed("3.897"), boxed("B")])
    assert (scores["accuracy"], scores["worst_case"]) == (50.0, 0.0)


def test_dynamath_tsv_errors(tmp_path):
    rows = dynamath_rows()
    rows[1]["answer_type"] = "essay"
    path = write_tsv(tmp_path / "DynaMath.tsv", rows)
    expect_error("dynamath", path, 1, "answer_type", "'essay' is not one of")
    rows = dynamath_rows()
    rows[0]["answer"] = "three"
    path = write_tsv(tmp_path / "DynaMath.tsv", rows)
    expect_error("dynamath", path, 0, "answer", "'three' is not a number")
    rows = dynamath_rows()
    rows[1]["qid"] = ""
    path = write_tsv(tmp_path / "DynaMath.tsv", rows)
    expect_error("dynamath", path, 1, "qid", "empty")


# --- HallusionBench ---------------------------------------------------------------------------------------------


def hallusion_rows() -> list[dict[str, Any]]:
    return [
        {"index": "VS_chart_1_0_0_0", "image": b64(RED), "question": "Is the bar for 2019 the highest?",
         "answer": "Yes", "category": "VS", "l2-category": "chart"},
        {"index": "VS_chart_1_0_1_0", "image": b64(BLUE), "question": "Is the bar for 2019 the highest?",
         "answer": "No", "category": "VS", "l2-category": "chart"},
    ]  # fmt: skip


def test_hallusionbench_tsv(tmp_path):
    path = write_tsv(tmp_path / "HallusionBench.tsv", hallusion_rows())
    records, questions = load_and_ask("hallusionbench", path)
    # ImageYORNDataset.build_prompt (HallusionBench): [image, question verbatim].
    assert [q.text for q in questions] == ["<image>Is the bar for 2019 the highest?"] * 2
    # Yes right, Yes wrong: aAcc 1/2; one figure of two; question 0 wrong on figure 1.
    scores = scored("hallusionbench", records, [boxed("Yes"), "Yes, it is."])
    assert (scores["aAcc"], scores["fAcc"], scores["qAcc"]) == (50.0, 50.0, 0.0)


def test_hallusionbench_tsv_errors(tmp_path):
    rows = hallusion_rows()
    rows[1]["index"] = "VS_chart_7"
    path = write_tsv(tmp_path / "HallusionBench.tsv", rows)
    expect_error("hallusionbench", path, 1, "index", "'VS_chart_7' has no set/figure/question ids")
    rows = hallusion_rows()
    del rows[0]["l2-category"], rows[1]["l2-category"]
    path = write_tsv(tmp_path / "HallusionBench.tsv", rows)
    expect_error("hallusionbench", path, 0, "l2-category", "missing")


# --- TextVQA, ChartQA -------------------------------------------------------------------------------------------


def textvqa_rows() -> list[dict[str, Any]]:
    answers = ["nokia"] * 8 + ["nokia phone", "nokia."]
    return [
        {"index": "34602", "image": b64(RED), "question": "what is the brand of this camera?", "answer": str(answers)},
        {"index": "34603", "image": b64(GREEN), "question": "what does the sign say?", "answer": str(["stop"] * 10)},
    ]


def test_textvqa_tsv(tmp_path):
    path = write_tsv(tmp_path / "TextVQA_VAL.tsv", textvqa_rows())
    records, questions = load_and_ask("textvqa_val", path)
    # ImageVQADataset.build_prompt: [image, question + "\nAnswer the question using a single word or phrase."].
    assert [q.text for q in questions] == [
        "<image>what is the brand of this camera?" + VQA,
        "<image>what does the sign say?" + VQA,
    ]
    # "Nokia" equals 9 normalised answers ("nokia." too): 1; "go" none: 0.
    assert scored("textvqa_val", records, [boxed("Nokia"), "go"])["accuracy"] == 50.0


def test_textvqa_tsv_errors(tmp_path):
    rows = textvqa_rows()
    rows[1]["answer"] = str(["stop"] * 9 + [" "])
    path = write_tsv(tmp_path / "TextVQA_VAL.tsv", rows)
    expect_error("textvqa_val", path, 1, "answer", "holds an empty answer")


def test_chartqa_tsv(tmp_path):
    rows = [
        {"index": "0", "image": b64(RED), "question": "What is the peak value?", "answer": "45.3", "split": "human"},
        {"index": "1", "image": b64(BLUE), "question": "Which country is first?", "answer": "Chile", "split": "human"},
    ]
    path = write_tsv(tmp_path / "ChartQA_TEST.tsv", rows)
    records, questions = load_and_ask("chartqa_test", path)
    assert questions[1].text == "<image>Which country is first?" + VQA
    # 46 is within 5 % of 45.3 (1.5 %); "chile" equals "Chile" ignoring case.
    assert scored("chartqa_test", records, [boxed("46"), "chile"]) == {
        "accuracy": 100.0,
        "count": 2.0,
        "accuracy/human": 100.0,
    }
    rows[1]["question"] = ""
    path = write_tsv(tmp_path / "ChartQA_TEST.tsv", rows)
    expect_error("chartqa_test", path, 1, "question", "empty")


# --- BLINK, CV-Bench-2D, V*Bench, VisOnlyQA ---------------------------------------------------------------------


def test_blink_tsv_with_two_images_per_row(tmp_path):
    rows = [
        {"index": "0", "image": str([b64(RED), b64(BLUE)]), "question": "Which image is the reflection?",
         "A": "the first image", "B": "the second image", "answer": "B", "category": "Visual_Similarity"},
    ]  # fmt: skip
    path = write_tsv(tmp_path / "BLINK.tsv", rows)
    records, questions = load_and_ask("blink", path)
    # ImageMCQDataset.build_prompt: [image, image, "Question: ...\nOptions:\nA. ...\nB. ...\n" + instruction].
    assert questions[0].text == (
        "<image><image>Question: Which image is the reflection?\nOptions:\nA. the first image\nB. the second image\n"
        + SELECT
    )
    assert scored("blink", records, [boxed("B")])["accuracy/Visual_Similarity"] == 100.0
    rows[0]["image"] = str([b64(RED), "bm90IGJhc2U2NA==!"])
    path = write_tsv(tmp_path / "BLINK.tsv", rows)
    expect_error("blink", path, 0, re.escape("image[1]"), "not valid base64")


def cv_bench_rows() -> list[dict[str, Any]]:
    prompt = "How many chairs are in the image? Select from the following choices.\n(A) 2\n(B) 3"
    return [
        {"index": "0", "image": b64(RED), "question": "How many chairs are in the image?", "prompt": prompt,
         "A": "2", "B": "3", "answer": "A", "split": "2D", "source": "ADE20K", "task": "Count"},
        {"index": "1", "image": b64(GREEN), "question": "How many cups are in the image?", "prompt": prompt,
         "A": "1", "B": "4", "answer": "B", "split": "2D", "source": "COCO", "task": "Count"},
    ]  # fmt: skip


def test_cv_bench_2d_tsv(tmp_path):
    path = write_tsv(tmp_path / "CV-Bench-2D.tsv", cv_bench_rows())
    records, questions = load_and_ask("cv_bench_2d", path)
    # CVBench.build_prompt: [image, the row's own prompt].
    assert questions[0].text == "<image>" + cv_bench_rows()[0]["prompt"]
    # ADE20K right, COCO wrong: (100 + 0) / 2.
    assert scored("cv_bench_2d", records, [boxed("A"), boxed("A")])["accuracy"] == 50.0
    rows = cv_bench_rows()
    rows[1]["source"] = ""
    path = write_tsv(tmp_path / "CV-Bench-2D.tsv", rows)
    expect_error("cv_bench_2d", path, 1, "source", "empty")


def test_vstarbench_tsv(tmp_path):
    rows = [
        {"index": "0", "image": b64(BLUE), "question": "What is the color of the umbrella?", "A": "red",
         "B": "blue", "answer": "B", "category": "direct_attributes"},
    ]  # fmt: skip
    path = write_tsv(tmp_path / "VStarBench.tsv", rows)
    records, questions = load_and_ask("vstarbench", path)
    assert questions[0].text == (
        "<image>Question: What is the color of the umbrella?\nOptions:\nA. red\nB. blue\n" + SELECT
    )
    assert scored("vstarbench", records, ["It is blue."])["accuracy"] == 100.0  # the option's text


def visonlyqa_rows() -> list[dict[str, Any]]:
    """visonlyqa_vlmevalkit.tsv: both sets in one file (``split``), the task as ``category``."""
    return [
        {"index": "0", "image": b64(RED), "image_path": "images/a.png", "question": "Is there a triangle ADP?",
         "answer": "B", "split": "Eval_Real", "category": "geometry__triangle", "unique_id": "x0",
         "A": "The statement is true", "B": "The statement is false"},
        {"index": "1", "image": b64(GREEN), "image_path": "images/b.png", "question": "Which angle is larger?",
         "answer": "A", "split": "Eval_Synthetic", "category": "syntheticgeometry__angle", "unique_id": "x1",
         "A": "angle A", "B": "angle B", "C": "equal"},
        {"index": "2", "image": b64(BLUE), "image_path": "images/c.png", "question": "Estimate the length.",
         "answer": "C", "split": "Eval_Synthetic", "category": "syntheticgeometry__length", "unique_id": "x2",
         "A": "1", "B": "2", "C": "3"},
    ]  # fmt: skip


def test_visonlyqa_reads_its_split_of_the_shared_tsv(tmp_path):
    path = write_tsv(tmp_path / "visonlyqa_vlmevalkit.tsv", visonlyqa_rows())
    real, real_questions = load_and_ask("visonlyqa_real", path)
    synthetic, _ = load_and_ask("visonlyqa_synthetic", path)
    assert [record["index"] for record in real] == ["0"] and [record["index"] for record in synthetic] == ["1", "2"]
    assert real_questions[0].text == (
        "<image>Question: Is there a triangle ADP?\nOptions:\nA. The statement is true\nB. The statement is false\n"
        + SELECT
    )
    assert scored("visonlyqa_synthetic", synthetic, [boxed("A"), boxed("B")]) == {
        "accuracy": 50.0,
        "count": 2.0,
        "accuracy/syntheticgeometry__angle": 100.0,
        "accuracy/syntheticgeometry__length": 0.0,
    }
    path = write_tsv(tmp_path / "real_only.tsv", visonlyqa_rows()[:1])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: rows: no visonlyqa_synthetic rows"):
        benchmarks.get("visonlyqa_synthetic").load(path)


# --- MathVerse Vision Only --------------------------------------------------------------------------------------

VISION_ONLY_QUERY = (
    "According to the question shown in the image, please directly answer the question and provide the correct "
    "option letter, e.g., A, B, C, D."
)


def test_mathverse_vision_only_tsv(tmp_path):
    rows = [
        {"index": "5", "image": b64(RED), "question": VISION_ONLY_QUERY, "answer": "C", "question_type": "multi-choice",
         "problem_version": "Vision Only", "problem_index": "2"},
    ]  # fmt: skip
    path = write_tsv(tmp_path / "MathVerse_MINI_Vision_Only.tsv", rows)
    records, questions = load_and_ask("mathverse_mini_vo", path)
    assert questions[0].text == "<image>" + VISION_ONLY_QUERY  # MathVerse.build_prompt: [image, question]
    assert scored("mathverse_mini_vo", records, [boxed("C")])["accuracy"] == 100.0
    rows[0]["problem_version"] = "Vision Intensive"
    path = write_tsv(tmp_path / "MathVerse_MINI_Vision_Only.tsv", rows)
    expect_error("mathverse_mini_vo", path, 0, "problem_version", "is 'Vision Intensive', not 'Vision Only'")
