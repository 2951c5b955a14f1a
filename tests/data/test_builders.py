r"""Data builders: the paper's perception pipeline (its template, MCQ parsing, letter regex and filter rule on scripted
answers) and pass rates (graded fractions, resumption, shard merge) on scripted generators; both commands end to end
through the CLI on tiny random models (files, counts, resumption; random models' answers are garbage)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from staged_vlm_jax import cli, models
from staged_vlm_jax.data import synthetic
from staged_vlm_jax.data.builders import generators, pass_rate, perception
from staged_vlm_jax.data.prompts import build_messages
from staged_vlm_jax.data.schema import ImageRef, mcq_problem
from staged_vlm_jax.data.sources import read_rows
from staged_vlm_jax.data.tokenizer import build_tiny_tokenizer
from staged_vlm_jax.rl.rewards import math_score

MCQ = {"question": "What colour is the circle?", "options": {"A": "red", "B": "blue", "C": "green", "D": "pink"},
       "answer": "B"}  # fmt: skip
FENCED = "```json\n" + json.dumps(MCQ) + "\n```"


# -- the official prompts, parsing and rule -------------------------------------------------------------------------


def test_the_generation_template_is_the_official_file_and_fills_like_generate_qa():
    # sha256 of data_pipeline/prompts/docci_mcq_generation.txt at VLM-CapCurriculum commit d58a584.
    digest = hashlib.sha256(perception.MCQ_GENERATION_TEMPLATE.encode()).hexdigest()
    assert digest == "4934512b0e88002d05adb5ffbe1b64aa1e6746fc3aa216dc573bc583fd172888"
    filled = perception.MCQ_GENERATION_TEMPLATE.format(description="A red {circle}.")
    assert "# Image description\nA red {circle}.\n\n# Your task" in filled
    assert '```json\n{\n  "question": "string",\n  "options": {\n' in filled


def test_filter_prompts_are_the_official_ones():
    block = "Question: What colour is the circle?\nOptions:\nA. red\nB. blue\nC. green\nD. pink\n"
    block += "Please select the correct answer from the options above."
    assert perception.question_block(MCQ) == block
    assert perception.caption_prompt("A blue circle.", MCQ) == (
        "Please answer the question based only on the image caption below.\nImage Caption: A blue circle.\n\n" + block
    )
    image = ImageRef(b"png", "here", "image", "x.png")
    chat = perception.image_chat(image, MCQ)
    assert chat.images == (image,)
    assert chat.messages == ({"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "Please answer based on the image.\n" + block}]},)  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (FENCED, None),
        (f"Sure! Here it is:\n{FENCED}\nHope it helps. ```json\n{{}}\n```", None),  # the first block
        ("```json" + json.dumps(MCQ) + "```", None),  # no whitespace needed around the object
        (json.dumps(MCQ), "no_json_block"),  # JSON, but not fenced
        ("```\n" + json.dumps(MCQ) + "\n```", "no_json_block"),  # fenced without the json tag
        ("```json\n" + json.dumps(MCQ), "no_json_block"),  # unclosed fence
        ('```json\n{"question": "Q", "options": {"A": "a",}, "answer": "A"}\n```', "invalid_json"),
        ("```json\n{'question': 'Q'}\n```", "invalid_json"),
        ("```json\n" + json.dumps({**MCQ, "question": " "}) + "\n```", "wrong_schema"),
        ("```json\n" + json.dumps({**MCQ, "answer": "E"}) + "\n```", "wrong_schema"),
        ("```json\n" + json.dumps({**MCQ, "answer": "b"}) + "\n```", "wrong_schema"),
        ("```json\n" + json.dumps({**MCQ, "options": {"A": "x", "B": "y", "C": "z"}}) + "\n```", "wrong_schema"),
        ("```json\n" + json.dumps({**MCQ, "options": {**MCQ["options"], "E": "e"}}) + "\n```", "wrong_schema"),
        ("```json\n" + json.dumps({**MCQ, "options": {**MCQ["options"], "C": ""}}) + "\n```", "wrong_schema"),
        ("```json\n" + json.dumps({**MCQ, "options": {**MCQ["options"], "C": 3}}) + "\n```", "wrong_schema"),
        ("```json\n" + json.dumps({**MCQ, "options": ["red", "blue", "green", "pink"]}) + "\n```", "wrong_schema"),
        ("```json\n" + json.dumps({"question": "Q", "answer": "A"}) + "\n```", "wrong_schema"),
    ],
)
def test_parse_mcq_accepts_the_schema_and_names_each_reject(raw, reason):
    if reason is None:
        assert perception.parse_mcq(raw) == MCQ
    else:
        with pytest.raises(perception.McqRejected) as rejected:
            perception.parse_mcq(raw)
        assert rejected.value.reason == reason


def test_parse_mcq_lists_the_options_in_letter_order():
    shuffled = {**MCQ, "options": dict(reversed(MCQ["options"].items()))}
    assert list(perception.parse_mcq("```json\n" + json.dumps(shuffled) + "\n```")["options"]) == ["A", "B", "C", "D"]


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("B", "B"),
        ("  C.  ", "C"),
        ("Answer: D", "D"),
        ("answer - a", "A"),  # the "answer" pattern ignores case
        ("The answer is B.", "B"),  # "answer is" is not the pattern; the first standalone letter is
        ("(C) a blue circle", "C"),
        ("a blue circle", "A"),  # upper-cased, the article is a standalone A
        ("It is blue", ""),
        ("ABCD", ""),  # no standalone letter
        ("E", ""),
        ("", ""),
        ("Answer:C, not D", "C"),
        ("I think D, or maybe answer: b", "B"),  # the "answer" pattern wins over an earlier letter
        ("option b", "B"),
    ],
)
def test_extract_letter_is_the_official_regex(response, letter):
    assert perception.extract_letter(response) == letter


@pytest.mark.parametrize(
    ("image", "caption", "verdict"),
    [
        (["A"], ["B"], None),
        (["A", "C"], ["B", "B"], None),  # every model wrong from the image (with different letters), right from text
        (["A", "C", "D"], ["B", "B", "B"], None),  # three models
        (["B"], ["B"], "answered_from_image"),
        (["A", "B"], ["B", "B"], "answered_from_image"),  # one model reads it off the image
        (["A", "C", "B"], ["B", "B", "B"], "answered_from_image"),
        ([""], ["B"], "no_letter_from_image"),  # an empty prediction is not a wrong one (`not in ("", gt)`)
        (["A", ""], ["B", "B"], "no_letter_from_image"),
        (["A"], ["C"], "wrong_from_caption"),
        (["A", "C"], ["B", ""], "wrong_from_caption"),  # an empty caption answer is not the right one
        (["A", "C", "D"], ["B", "B", "A"], "wrong_from_caption"),
        (["B", ""], ["C", "C"], "answered_from_image"),  # the first failing check names the reason
    ],
)
def test_filter_keeps_exactly_the_mcqs_every_model_misses_from_the_image_and_solves_from_the_caption(
    image, caption, verdict
):
    assert perception.filter_verdict("B", image, caption) == verdict
    official = all(letter not in ("", "B") for letter in image) and all(letter == "B" for letter in caption)
    assert (verdict is None) == official


# -- generators -----------------------------------------------------------------------------------------------------


def test_an_endpoint_generator_sends_text_as_a_user_turn_and_images_as_data_urls(tmp_path):
    synthetic.draw_scene([], 56).save(tmp_path / "scene.png")
    image = ImageRef(tmp_path / "scene.png", "here", "image", "scene.png")
    asked = []

    def chat(messages, max_tokens, temperature):
        asked.append((messages, max_tokens, temperature))
        return f"reply {len(asked)}"

    generator = generators.EndpointGenerator("served", chat, concurrency=2)
    replies = generator.complete(["raw text", perception.image_chat(image, MCQ)], 8, n=2, temperature=0.5)
    assert sorted(replies) == ["reply 1", "reply 2", "reply 3", "reply 4"]
    texts = [messages for messages, _, _ in asked if isinstance(messages[0]["content"], str)]
    assert texts == [[{"role": "user", "content": "raw text"}]] * 2
    images = [messages[0]["content"] for messages, _, _ in asked if not isinstance(messages[0]["content"], str)]
    assert len(images) == 2 and images[0][0]["image_url"]["url"].startswith("data:image/png;base64,iVBOR")
    assert images[0][1]["text"].startswith("Please answer based on the image.\n")
    assert {(tokens, temperature) for _, tokens, temperature in asked} == {(8, 0.5)}
    with pytest.raises(ValueError, match="top_p"):
        generator.complete(["x"], 8, top_p=0.9)


# -- pass rates on a scripted generator -----------------------------------------------------------------------------

K = 4


class Scripted:
    """A `Generator` answering row i's problem with i correct samples of K (then wrong ones), recording what it is
    asked; ``fail_after`` calls it raises, as a killed process stops."""

    name = "scripted"

    def __init__(self, fail_after: int | None = None) -> None:
        self.asked: list[str] = []
        self.prompts: list[generators.Chat] = []
        self.fail_after = fail_after

    def complete(self, prompts, max_new_tokens, *, n=1, temperature=0.0, top_p=1.0, top_k=0, seed=0):
        if self.fail_after is not None and len(self.prompts) >= self.fail_after:
            raise RuntimeError("killed")
        assert (n, temperature, top_p, top_k, max_new_tokens) == (K, 0.7, 0.9, 20, 1024)
        replies = []
        for prompt in prompts:
            self.prompts.append(prompt)
            problem = prompt.messages[-1]["content"]
            problem = problem if isinstance(problem, str) else problem[-1]["text"]
            row = int(problem.split("row ")[1].split(":")[0])
            self.asked.append(f"row {row}")
            replies += [f"<think>t</think> \\boxed{{{row * 2 if j < row else 'x'}}}" for j in range(n)]
        return replies


def score(responses, truths):
    return [math_score(response, truth) for response, truth in zip(responses, truths, strict=True)], {}


@pytest.fixture
def rows(tmp_path) -> Path:
    path = tmp_path / "rows.jsonl"
    lines = [{"id": f"q{row}", "problem": f"row {row}: what is {row} + {row}?", "answer": str(row * 2), "source": "t"}
             for row in range(6)]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _pass_rate(rows: Path, out: Path, generator: Scripted, **kwargs) -> str:
    return pass_rate.pass_rate(rows, out, lambda: generator, score, capability="text_reasoning", k=K, batch_size=2,
                               **kwargs)  # fmt: skip


def test_pass_rate_is_the_fraction_of_correct_samples_and_the_rows_keep_their_columns(rows, tmp_path):
    out = tmp_path / "out.jsonl"
    generator = Scripted()
    line = _pass_rate(rows, out, generator)
    assert line.endswith(f"wrote 6 rows to {out}")
    written = [json.loads(text) for text in out.read_text().splitlines()]
    for row, record in enumerate(written):
        assert record["id"] == f"q{row}" and record["source"] == "t"  # the input's columns, in input order
        correct = min(row, K)
        assert record["correctness"] == [True] * correct + [False] * (K - correct)
        assert record["pass_rate"] == correct / K
        assert record["predictions"] == [str(row * 2)] * correct + ["x"] * (K - correct)  # the graded box contents
    assert [example.pass_rate for example in read_rows(out, capability="text_reasoning")] == [0, 0.25, 0.5, 0.75, 1, 1]
    # The training prompt: the row's problem with the think/boxed instruction appended, as training builds it.
    first = generator.prompts[0]
    assert list(first.messages) == build_messages("row 0: what is 0 + 0?", 0) and first.images == ()


def test_pass_rate_resumes_asking_only_the_missing_rows(rows, tmp_path):
    _pass_rate(rows, tmp_path / "whole.jsonl", Scripted())
    out = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="killed"):
        _pass_rate(rows, out, Scripted(fail_after=4))  # killed after two batches of two rows
    assert not out.exists()
    part = tmp_path / "out.part-0-of-1.jsonl"
    lines = part.read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1, 2, 3]
    part.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # and the last line cut short by the kill
    rerun = Scripted()
    _pass_rate(rows, out, rerun)
    assert rerun.asked == ["row 3", "row 4", "row 5"]
    assert out.read_text() == (tmp_path / "whole.jsonl").read_text()
    done = Scripted(fail_after=0)
    _pass_rate(rows, out, done)  # all done: nothing asked, merged again
    assert done.asked == [] and out.read_text() == (tmp_path / "whole.jsonl").read_text()


def test_answers_the_reward_fails_to_grade_are_wrong_and_counted(rows, tmp_path):
    def failing(responses, truths):
        return [{"overall": 0.0, "format": 0.0, "accuracy": 0.0}] * len(responses), {"reward/errors": 1.0}

    line = pass_rate.pass_rate(rows, tmp_path / "out.jsonl", Scripted, failing, capability="text_reasoning", k=K,
                               batch_size=4)  # fmt: skip
    assert "mean pass rate 0.000 (2 answers not graded, scored wrong: {'reward/errors': 2})" in line


def test_the_last_shard_to_finish_merges_the_unsharded_output(rows, tmp_path):
    _pass_rate(rows, tmp_path / "whole.jsonl", Scripted())
    out = tmp_path / "sharded.jsonl"
    shards = [Scripted(), Scripted(), Scripted()]
    assert _pass_rate(rows, out, shards[2], shard=2, num_shards=3).endswith(
        f"4 rows of other shards to go (the last shard to finish writes {out})")  # fmt: skip
    _pass_rate(rows, out, shards[0], shard=0, num_shards=3)
    assert not out.exists()
    assert _pass_rate(rows, out, shards[1], shard=1, num_shards=3).endswith(f"wrote 6 rows to {out}")
    assert [generator.asked for generator in shards] == [["row 0", "row 3"], ["row 1", "row 4"], ["row 2", "row 5"]]
    assert out.read_text() == (tmp_path / "whole.jsonl").read_text()


def test_the_passk_prompt_is_the_official_layout(tmp_path):
    example = next(read_rows(_row_file(tmp_path, "<image>left <image>right"), capability="perception",
                             verify_images=False))  # fmt: skip
    chat = pass_rate.passk_chat(example)
    assert chat.messages[0] == {"role": "system", "content": pass_rate.PASSK_SYSTEM_PROMPT}
    assert chat.messages[1]["content"] == [
        {"type": "text", "text": "<image_1>: "}, {"type": "image"}, {"type": "text", "text": "<image_2>: "},
        {"type": "image"}, {"type": "text", "text": "<image>left <image>right"}]  # fmt: skip
    assert [image.field for image in chat.images] == ["images[0]", "images[1]"]
    assert "<thinking> </thinking> tags" in pass_rate.PASSK_SYSTEM_PROMPT


def _row_file(tmp_path: Path, problem: str) -> Path:
    path = tmp_path / "two.jsonl"
    path.write_text(json.dumps({"problem": problem, "answer": "A", "images": ["a.png", "b.png"]}) + "\n")
    return path


# -- end to end through the CLI on tiny random models ---------------------------------------------------------------

PIXELS = ["--min-pixels", str(56 * 56), "--max-pixels", str(112 * 112), "--dtype", "float32"]
SCENES = [
    [synthetic.Shape("circle", "red", 0, 0, 0.8), synthetic.Shape("square", "blue", 3, 3, 0.5)],
    [synthetic.Shape("triangle", "green", 1, 2, 0.9)],
    [synthetic.Shape("square", "yellow", 2, 0, 0.6), synthetic.Shape("circle", "purple", 0, 3, 0.4)],
    [synthetic.Shape("circle", "orange", 3, 1, 0.7)],
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Three tiny random models (a generator, two filters) and captioned synthetic scenes, one image missing."""
    root = tmp_path_factory.mktemp("builders")
    cfg = models.tiny_config("qwen2_5_vl")
    for seed, name in enumerate(("generator", "filter_a", "filter_b")):
        models.save_hf(models.create(cfg, seed=seed), cfg, root / name)
        build_tiny_tokenizer(root / name)
    (root / "images").mkdir()
    captions = []
    for index, shapes in enumerate(SCENES):
        synthetic.draw_scene(shapes, 56).save(root / "images" / f"scene_{index}.png")
        described = " and ".join(f"a {shape.description} in row {shape.row}, column {shape.column}" for shape in shapes)
        captions.append({"example_id": f"scene_{index}", "image_file": f"scene_{index}.png",
                         "description": f"A white image with {described}."})  # fmt: skip
    captions.append({"example_id": "lost", "image_file": "lost.png", "description": "An image that went missing."})
    (root / "captions.jsonl").write_text("".join(json.dumps(caption) + "\n" for caption in captions))
    return {"root": root, "captions": root / "captions.jsonl", "images": root / "images"}


def _build(tiny, out: Path) -> list[str]:
    root = tiny["root"]
    return ["data", "build-perception", "--captions", str(tiny["captions"]), "--images", str(tiny["images"]),
            "--generator", str(root / "generator"), "--filters", f"{root / 'filter_a'},{root / 'filter_b'}",
            "--out", str(out), "--batch-size", "2", *PIXELS]  # fmt: skip


def test_build_perception_end_to_end_counts_every_item_and_resumes(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "perception"
    out.mkdir()
    # A generator that wrote valid MCQs for scenes 0 and 1 and the lost image (random models write none), so the
    # tiny filter models have MCQs to answer; the rest is the tiny generator's (resumption: these are not asked).
    seeded = {0: MCQ, 1: {**MCQ, "answer": "C"}, 4: MCQ}
    (out / "mcqs.jsonl").write_text("".join(json.dumps({"index": index, "raw": FENCED, "mcq": mcq}) + "\n"
                                            for index, mcq in seeded.items()))  # fmt: skip
    asked: list[tuple[str, int]] = []
    complete = generators.LocalGenerator.complete

    def recording(self, prompts, max_new_tokens, **kwargs):
        asked.append((Path(self.name).name, len(prompts)))
        return complete(self, prompts, max_new_tokens, **kwargs)

    monkeypatch.setattr(generators.LocalGenerator, "complete", recording)
    assert cli.main(_build(tiny, out)) == 0
    summary = capsys.readouterr().out.splitlines()
    mcqs = [json.loads(line) for line in (out / "mcqs.jsonl").read_text().splitlines()]
    assert sorted(row["index"] for row in mcqs) == [0, 1, 2, 3, 4]
    generated = [row for row in mcqs if row["index"] in (2, 3)]  # the tiny generator's: garbage, counted by reason
    assert all(row["reject"] in ("no_json_block", "invalid_json", "wrong_schema") for row in generated)
    assert asked[0] == ("generator", 2)  # scenes 2 and 3 only, in one batch
    assert summary[0].startswith("generate: kept 3 of 5; rejected 2 (")
    for name in ("filter_a", "filter_b"):
        answers = [json.loads(line) for line in (out / "answers" / f"{perception._slug(str(tiny['root'] / name))}"
                                                 ".jsonl").read_text().splitlines()]  # fmt: skip
        assert [row["index"] for row in answers] == [0, 1, 4]
        assert "cannot open image" in answers[2]["image_error"]
        assert set(answers[0]) == {"index", "image_answer", "image_raw", "caption_answer", "caption_raw"}
        assert (name, 2) in asked  # image-only and caption-only prompts of MCQs 0 and 1 (the lost image is not asked)
    filtered, written = summary[1], summary[2]
    kept = int(filtered.split("kept ")[1].split(" ")[0])
    assert filtered.startswith(f"filter (2 models): kept {kept} of 3; rejected {3 - kept} (")
    assert "unloadable_image: 1" in filtered
    assert written == f"write: {kept} rows to {out / 'perception.jsonl'} (images relative to {tiny['images']})"
    examples = list(read_rows(out / "perception.jsonl", capability="perception", image_root=tiny["images"]))
    assert len(examples) == kept
    for example in examples:  # whatever the random filters let through, it reads back as a Stage-1 row
        assert example.problem == mcq_problem(MCQ["question"], MCQ["options"]) and example.answer in ("B", "C")

    # A rerun loads no model: everything is on disk.
    before = {path.name: path.read_text() for path in out.rglob("*.jsonl")}
    monkeypatch.setattr(generators.LocalGenerator, "load", lambda *args, **kwargs: pytest.fail("loaded a model"))
    assert cli.main(_build(tiny, out)) == 0
    assert capsys.readouterr().out.splitlines() == summary
    assert {path.name: path.read_text() for path in out.rglob("*.jsonl")} == before
    # Another generator on the same output is refused, in one line.
    other = _build(tiny, out)
    other[other.index("--generator") + 1] = str(tiny["root"] / "filter_a")
    assert cli.main(other) == 2
    assert "build.json: generator: this output was built with" in capsys.readouterr().err


def test_build_perception_errors_are_one_line(tiny, tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"description": "a", "image_file": "a.png"}\n{"caption": "b", "image_file": "b.png"}\n')
    argv = _build(tiny, tmp_path / "out")
    argv[argv.index("--captions") + 1] = str(captions)
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"staged-vlm data: error: {captions}:2: description: missing or empty caption")
    assert error.count("\n") == 1
    assert cli.main([*_build(tiny, tmp_path / "out"), "--filter-urls", "http://h/v1"]) == 2
    assert "--filters names 2 models but --filter-urls 1 endpoints" in capsys.readouterr().err


class FakeEndpoint(http.server.BaseHTTPRequestHandler):
    """An OpenAI chat-completions server: the generator writes `MCQ`; a filter answers A from the image (wrong) and
    B from the caption (right), so every MCQ whose image loads is kept."""

    requests: list[dict] = []

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeEndpoint.requests.append(request)
        content = request["messages"][-1]["content"]
        image, writer = isinstance(content, list), "assessment-item writer" in str(content)
        reply = "Answer: A" if image else FENCED if writer else "B"
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_build_perception_through_an_endpoint_keeps_what_the_filters_miss_from_the_image(tiny, tmp_path, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    try:
        argv = ["data", "build-perception", "--captions", str(tiny["captions"]), "--images", str(tiny["images"]),
                "--generator", "writer", "--generator-url", url, "--filters", "seven_b,thirty_two_b",
                "--filter-urls", f"{url},{url}", "--out", str(tmp_path)]  # fmt: skip
        assert cli.main(argv) == 0
    finally:
        server.shutdown()
    assert capsys.readouterr().out.splitlines() == [
        "generate: kept 5 of 5",
        "filter (2 models): kept 4 of 5; rejected 1 (unloadable_image: 1)",
        f"write: 4 rows to {tmp_path / 'perception.jsonl'} (images relative to {tiny['images']})",
    ]
    asked = FakeEndpoint.requests
    assert {request["model"] for request in asked} == {"writer", "seven_b", "thirty_two_b"}
    assert sum(request["model"] == "writer" for request in asked) == 5 and len(asked) == 5 + 2 * 2 * 4
    assert all(request["temperature"] == 0 for request in asked)
    assert {request["max_tokens"] for request in asked} == {512, 8}
    image = next(request for request in asked if isinstance(request["messages"][-1]["content"], list))
    assert image["messages"][-1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    rows = [json.loads(line) for line in (tmp_path / "perception.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["scene_0", "scene_1", "scene_2", "scene_3"]
    assert rows[0]["images"] == ["scene_0.png"] and rows[0]["answer"] == "B"
    assert rows[0]["generator"] == {"model": "writer", "raw": FENCED}
    assert rows[0]["filters"] == [
        {"model": name, "image_answer": "A", "image_raw": "Answer: A", "caption_answer": "B", "caption_raw": "B"}
        for name in ("seven_b", "thirty_two_b")]  # fmt: skip
    assert rows[0]["caption"].startswith("A white image with a red circle in row 0")
    examples = list(read_rows(tmp_path / "perception.jsonl", capability="perception", image_root=tiny["images"]))
    assert [example.id for example in examples] == [row["id"] for row in rows]


def test_pass_rate_end_to_end_writes_readable_columns_and_resumes(tiny, tmp_path, capsys, monkeypatch):
    data = synthetic.write_synthetic(tmp_path / "data", "perception", 3, seed=0)
    out = tmp_path / "rates.jsonl"
    argv = ["data", "pass-rate", "--data", str(data), "--capability", "perception", "--model",
            str(tiny["root"] / "generator"), "--out", str(out), "--k", "2", "--max-new-tokens", "16",
            "--batch-size", "2", *PIXELS]  # fmt: skip
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip().endswith(f"wrote 3 rows to {out}")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    originals = [json.loads(line) for line in data.read_text().splitlines()]
    for row, original in zip(rows, originals, strict=True):
        assert {key: row[key] for key in original if key != "pass_rate"} == {
            key: value for key, value in original.items() if key != "pass_rate"}  # fmt: skip
        assert len(row["predictions"]) == len(row["correctness"]) == 2
        assert row["pass_rate"] == sum(row["correctness"]) / 2
    rates = [example.pass_rate for example in read_rows(out, capability="perception", image_root=data.parent)]
    assert rates == [row["pass_rate"] for row in rows]

    # A kill while writing the last row: the rerun asks for that row only.
    part = tmp_path / "rates.part-0-of-1.jsonl"
    lines = part.read_text().splitlines()
    part.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])
    asked = []
    complete = generators.LocalGenerator.complete
    monkeypatch.setattr(
        generators.LocalGenerator,
        "complete",
        lambda self, prompts, *a, **kw: asked.append(len(prompts)) or complete(self, prompts, *a, **kw),
    )
    assert cli.main(argv) == 0
    assert asked == [1] and len(out.read_text().splitlines()) == 3
    assert cli.main([*argv, "--shard", "2", "--num-shards", "2"]) == 2
    assert "--shard 2 is not in [0, --num-shards 2)" in capsys.readouterr().err
