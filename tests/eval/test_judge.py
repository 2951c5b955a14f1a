r"""The optional LLM judge (`eval.judge`) against a scripted OpenAI-compatible endpoint: a tiny HTTP server on
127.0.0.1 (port 0, a thread) that records every request and answers chat completions as each test scripts.

Suite-level tests run `SuiteRunner` on answers already in the predictions file (so no model is needed: nothing is
left to generate) for an MMStar-shaped file whose five records are (answers A, B, C, D, A, options 1..4):

0. ``\boxed{A}``            the rule reads A: right, never sent to the judge
1. ``I think it is two``    no box, no rule match: the judge answers B: right (wrong without a judge)
2. ``\boxed{E}``            boxed but no option: wrong, never sent (a box is the model's answer)
3. ``The answer is D``      the rule reads D: right, never sent
4. ``hmm``                  no box, no rule match: the judge answers Z (no option): wrong

so the accuracy is 3/5 with the judge and 2/5 by rule alone.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from staged_vlm_jax.eval import benchmarks
from staged_vlm_jax.eval.benchmarks import JUDGED
from staged_vlm_jax.eval.judge import Judge, JudgeError, JudgeSpec
from tests.eval.benchmark_files import write_mmstar
from tests.eval.test_extended_loaders import hallusion_rows
from tests.eval.test_loaders import write_tsv

JUDGE_MODEL = "judge-1"
PREDICTIONS = ["\\boxed{A}", "I think it is two", "\\boxed{E}", "The answer is D", "hmm"]
# The MCQ judge prompt ends "Answer: {response}\nYour output: ".
_JUDGED_RESPONSE = re.compile(r"Answer: (?P<response>[^\n]*)\nYour output: $")
MCQ_REPLIES = {"I think it is two": "B", "hmm": "Z"}


def completion(content: str) -> str:
    """An OpenAI chat-completion response body."""
    return json.dumps({"id": "c", "object": "chat.completion", "model": JUDGE_MODEL,
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]})  # fmt: skip


def mcq_judge(body: dict) -> tuple[int, str]:
    response = _JUDGED_RESPONSE.search(body["messages"][-1]["content"])["response"]
    return 200, completion(MCQ_REPLIES[response])


@contextlib.contextmanager
def judge_server(reply: Callable[[dict], tuple[int, str]]) -> Iterator[tuple[str, list[dict]]]:
    """(base URL, the requests received: path, headers, body) of a server answering each request with
    ``reply(body)`` = (HTTP status, response text)."""
    requests: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            status, text = reply(body)
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    finally:
        server.shutdown()
        server.server_close()


def dead_url() -> str:
    """A URL on a local port nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def spec(url: str, **fields) -> JudgeSpec:
    return JudgeSpec(url=url, model=JUDGE_MODEL, **{"retries": 1, "backoff_s": 0.0, "max_concurrency": 2, **fields})


# --- The client --------------------------------------------------------------------------------------------------


def test_a_request_is_an_openai_chat_completion_with_the_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Extract: 5"}]
    with judge_server(lambda body: (200, completion(" 5 "))) as (url, requests):
        assert Judge(spec(url + "/", api_key_env="MY_JUDGE_KEY", max_tokens=64)).complete(messages) == " 5 "
    [request] = requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    assert request["body"] == {"model": JUDGE_MODEL, "messages": messages, "temperature": 0, "max_tokens": 64}


def test_no_key_is_sent_when_its_variable_is_unset(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with judge_server(lambda body: (200, completion("x"))) as (url, requests):
        Judge(spec(url)).complete([{"role": "user", "content": "hi"}])
    assert "Authorization" not in requests[0]["headers"]


def test_server_errors_are_retried_client_errors_are_not():
    statuses = iter([503, 500, 200])

    def busy_twice(body: dict) -> tuple[int, str]:
        status = next(statuses)
        return status, completion("ok") if status == 200 else "busy"

    with judge_server(busy_twice) as (url, requests):
        assert Judge(spec(url, retries=2)).complete([{"role": "user", "content": "hi"}]) == "ok"
        assert len(requests) == 3
    with judge_server(lambda body: (404, '{"error": "no such model"}')) as (url, requests):
        with pytest.raises(JudgeError, match=r"HTTP 404 .*no such model"):
            Judge(spec(url, retries=3)).complete([{"role": "user", "content": "hi"}])
        assert len(requests) == 1


def test_a_reply_that_is_no_chat_completion_fails_after_its_retries():
    with judge_server(lambda body: (200, "<html>proxy error</html>")) as (url, requests):
        with pytest.raises(JudgeError, match=r"not a chat completion .* \(after 2 attempts\)"):
            Judge(spec(url)).complete([{"role": "user", "content": "hi"}])
        assert len(requests) == 2


def test_an_unreachable_endpoint_fails_fast_after_the_first_request():
    judge = Judge(spec(dead_url()))
    with pytest.raises(JudgeError, match="cannot reach"):
        judge.complete([{"role": "user", "content": "hi"}])
    with pytest.raises(JudgeError, match="not sent: the endpoint is down"):
        judge.complete([{"role": "user", "content": "hi"}])


def test_judge_spec_problems():
    assert JudgeSpec().problems() == []  # off
    assert [problem.split(":")[0] for problem in JudgeSpec(url="localhost:8000", model="").problems()] == [
        "judge.url",
        "judge.model",
    ]
    assert JudgeSpec(url="http://x/v1", model="m", max_concurrency=0).problems() == [
        "judge.max_concurrency and judge.max_tokens must be >= 1"
    ]


# --- Through the suite -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runner_parts(tmp_path_factory) -> dict:
    from staged_vlm_jax.data.tokenizer import build_tiny_tokenizer, load_tokenizer
    from staged_vlm_jax.eval import suite

    root = tmp_path_factory.mktemp("judge")
    build_tiny_tokenizer(root / "tokenizer")
    return {
        "tokenizer": load_tokenizer(root / "tokenizer"),
        "images": suite.image_inputs(suite.SuiteSpec({}), "qwen2_5_vl"),
        "mmstar": write_mmstar(root / "MMStar.tsv", 5),
        "hallusionbench": str(write_tsv(root / "HallusionBench.tsv", hallusion_rows())),
    }


def answered_workdir(tmp_path: Path) -> Path:
    """A workdir whose mmstar predictions are all answered already (`PREDICTIONS`)."""
    workdir = tmp_path / "eval"
    workdir.mkdir()
    rows = [{"index": i, "prediction": text, "response_tokens": 4} for i, text in enumerate(PREDICTIONS)]
    (workdir / "mmstar.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return workdir


def evaluate(parts: dict, workdir: Path, judge: JudgeSpec, name: str = "mmstar") -> dict[str, float]:
    """Benchmark ``name``'s scores from `SuiteRunner` (no model: every record is answered in ``workdir`` already)."""
    from staged_vlm_jax.eval.suite import SuiteRunner, SuiteSpec

    runner = SuiteRunner(SuiteSpec({name: parts[name]}, judge=judge), None, parts["tokenizer"], parts["images"], None)
    return runner.run(workdir)[name]


def rows(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "mmstar.jsonl").read_text().splitlines()]


def test_the_scorer_sees_the_files_own_index(runner_parts, tmp_path):
    """A predictions row's ``index`` is the record's position; the record keeps its TSV ``index`` (HallusionBench
    reads its set, figure and question ids from it)."""
    workdir = tmp_path / "eval"
    workdir.mkdir()
    rows = [{"index": i, "prediction": "Yes", "response_tokens": 1} for i in range(2)]
    (workdir / "hallusionbench.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    scores = evaluate(runner_parts, workdir, JudgeSpec(), "hallusionbench")
    # Figure 0 (answer Yes) right, figure 1 (No) wrong; the question, asked about both, wrong.
    assert (scores["aAcc"], scores["fAcc"], scores["qAcc"]) == (50.0, 50.0, 0.0)


def test_without_a_judge_scoring_is_rule_based(runner_parts, tmp_path):
    scores = evaluate(runner_parts, answered_workdir(tmp_path), JudgeSpec())
    assert scores == {"accuracy": 40.0, "count": 5.0, "accuracy/coarse perception": 40.0}  # records 0 and 3


def test_the_judge_reads_only_what_the_rules_cannot_and_its_answers_are_cached(runner_parts, tmp_path):
    workdir = answered_workdir(tmp_path)
    with judge_server(mcq_judge) as (url, requests):
        scores = evaluate(runner_parts, workdir, spec(url))
        # (1) only records 1 and 4 were sent; (5) each as an OpenAI chat completion, greedy.
        sent = sorted(_JUDGED_RESPONSE.search(r["body"]["messages"][0]["content"])["response"] for r in requests)
        assert sent == ["I think it is two", "hmm"]
        for request in requests:
            assert request["path"] == "/v1/chat/completions"
            assert set(request["body"]) == {"model", "messages", "temperature", "max_tokens"}
            assert (request["body"]["model"], request["body"]["temperature"]) == (JUDGE_MODEL, 0)
            [message] = request["body"]["messages"]
            assert message["role"] == "user" and message["content"].startswith("You are an AI assistant")
            assert "Question: How many shapes are there? (" in message["content"]
            assert "There are several options: \nA. 1\nB. 2\nC. 3\nD. 4\n" in message["content"]
        # (2) record 1 is right by the judge's B, record 4 wrong by its Z.
        assert scores["accuracy"] == 60.0
        assert {key: value for key, value in scores.items() if key.startswith("judge/")} == {
            "judge/wanted": 2.0, "judge/cached": 0.0, "judge/asked": 2.0, "judge/failed": 0.0}  # fmt: skip
        # The verdicts are on the predictions rows, one line per record.
        saved = rows(workdir)
        assert [row["index"] for row in saved] == [0, 1, 2, 3, 4]
        assert [row.get("judge", {}).get("extraction") for row in saved] == [None, "B", None, None, "Z"]
        assert saved[1]["judge"] == {"model": JUDGE_MODEL, "reply": "B", "extraction": "B"}
        # (3) a rerun asks nothing and scores the same.
        again = evaluate(runner_parts, workdir, spec(url))
        assert len(requests) == 2
        assert again == {**scores, "judge/cached": 2.0, "judge/asked": 0.0}
        # Another judge model's verdicts are not reused.
        evaluate(runner_parts, workdir, JudgeSpec(url=url, model="judge-2", retries=0))
        assert len(requests) == 4 and {r["body"]["model"] for r in requests[2:]} == {"judge-2"}


def test_a_dead_endpoint_is_reported_and_the_rule_scores_stand(runner_parts, tmp_path, capsys):
    workdir = answered_workdir(tmp_path)
    # (4) nothing listens: no crash, the records keep their rule-based score, the failures are counted and logged.
    scores = evaluate(runner_parts, workdir, spec(dead_url()))
    assert scores["accuracy"] == 40.0
    assert (scores["judge/asked"], scores["judge/failed"]) == (2.0, 2.0)
    assert "eval: judge: 2 of 2 mmstar requests failed (e.g. " in capsys.readouterr().err
    saved = rows(workdir)
    assert [row["prediction"] for row in saved] == PREDICTIONS  # no answer lost
    assert "cannot reach" in saved[1]["judge"]["error"] and saved[1]["judge"]["model"] == JUDGE_MODEL
    assert json.loads((workdir / "scores.json").read_text())["mmstar"]["judge/failed"] == 2.0
    # A rerun once the endpoint is up asks the failed records again.
    with judge_server(mcq_judge) as (url, requests):
        scores = evaluate(runner_parts, workdir, spec(url))
    assert len(requests) == 2 and scores["accuracy"] == 60.0 and scores["judge/failed"] == 0.0


def test_an_unusable_reply_is_a_failure_and_asked_again(runner_parts, tmp_path):
    workdir = answered_workdir(tmp_path)
    with judge_server(lambda body: (200, completion("I cannot decide."))) as (url, requests):
        scores = evaluate(runner_parts, workdir, spec(url))
    assert (scores["accuracy"], scores["judge/failed"]) == (40.0, 2.0)
    assert rows(workdir)[1]["judge"]["error"] == "unusable reply: 'I cannot decide.'"


# --- Each benchmark's judge step ---------------------------------------------------------------------------------


def vista_choice(prediction: str) -> dict:
    return {"question": "Hint: pick.\nQuestion: Which fraction?\nChoices:\n(A) 3/11\n(B) 8/11", "answer": "8/11",
            "question_type": "multi_choice", "answer_type": "text", "choices": "['3/11', '8/11']",
            "prediction": prediction}  # fmt: skip


def verse_free(prediction: str) -> dict:
    return {"problem_version": "Vision Intensive", "question": "Find d.", "answer": "22.3",
            "question_type": "free-form", "prediction": prediction}  # fmt: skip


def dyna(prediction: str) -> dict:
    return {"question": "What is the period?", "answer": "2.094", "answer_type": "float", "qid": "1", "varid": "1",
            "prediction": prediction}  # fmt: skip


# benchmark -> (a record its rules cannot read, the judge's reply, text its prompt holds, right with / without it)
JUDGE_CASES = {
    "mathvista_mini": (
        vista_choice("I would say the second one"),
        "B",
        "Model respone: I would say the second oneExtracted answer:",
        True,
        False,  # no option read: the official nearest choice by edit distance, 3/11
    ),
    "mathvision_mini": (
        {"question": "How many?", "answer": "7", "choices": "[]", "prediction": "There are seven"},
        "7",
        "How many?\nModel respone: There are sevenExtracted answer:",
        True,
        False,
    ),
    "mathverse_mini_vi": (
        verse_free("<think>d = 22.3</think> so d is twenty-two point three"),
        "22.3",
        "7.\nModel response: 'so d is twenty-two point three'\nExtracted Answer: ",  # after </think> only
        True,
        False,
    ),
    "wemath": (
        {"question": "Which?", "A": "3", "B": "4", "answer": "B", "ID": "1", "key": "2steps_1", "prediction": "four"},
        "B",
        "Question: <start>\nWhich?\nOptions: There are several options: \nA. 3\nB. 4\n\n<end>\nAnswer: <start>\nfour",
        True,
        False,
    ),
    "pope": (
        {"question": "Is there a dog", "answer": "no", "prediction": "I see only cats"},
        "No",
        "Question: Is there a dog?\nAnswer: I see only cats\nYour output: ",
        True,
        False,
    ),
    "blink": (
        {"question": "Which point is closer", "A": "Point A", "B": "Point B", "answer": "A", "prediction": "The first"},
        "(A)",
        "Options: There are several options: \nA. Point A\nB. Point B\n\n(Z) Failed\nAnswer: The first\n",
        True,
        False,
    ),
    "dynamath": (
        dyna("The period is about two"),
        "2.094",
        "Free-form answer: The period is about two\nInstruction: Output a three-digit floating-point number",
        True,
        False,
    ),
}


@pytest.mark.parametrize(
    "name, record, reply, prompt, right, right_by_rule",
    [(name, *case) for name, case in JUDGE_CASES.items()],
    ids=JUDGE_CASES.keys(),
)
def test_each_judge_step(name, record, reply, prompt, right, right_by_rule):
    bench = benchmarks.get(name)
    task = bench.judge
    assert task.wanted(record, 0)
    messages = task.messages(record)
    assert messages[-1]["role"] == "user" and prompt in messages[-1]["content"]
    extraction = task.parse(reply, record)
    assert extraction is not None
    if name == "wemath":  # WeMath scores whole problems; its row rule is what the judge feeds
        from staged_vlm_jax.eval.benchmarks.wemath import row_correct

        assert (row_correct({**record, JUDGED: extraction}, 0), row_correct(record, 0)) == (right, right_by_rule)
        return
    headline = bench.headline if name != "pope" else "accuracy"
    assert bench.score([{**record, JUDGED: extraction}])[headline] == (100.0 if right else 0.0)
    assert bench.score([record])[headline] == (100.0 if right_by_rule else 0.0)


def test_a_boxed_response_is_never_sent_to_the_judge():
    # The rules cannot read any of these boxes, but a box is the model's answer: scored by rule, wrong.
    boxed = [
        ("mathvista_mini", vista_choice("\\boxed{the second}")),
        ("mathverse_mini_vi", verse_free("\\boxed{twenty}")),
        ("dynamath", dyna("\\boxed{about two}")),
        ("pope", {"question": "Is there a dog", "answer": "no", "prediction": "\\boxed{maybe}"}),
    ]
    for name, record in boxed:
        assert not benchmarks.get(name).judge.wanted(record, 0), name


def test_judge_replies_each_benchmark_cannot_use():
    assert benchmarks.get("mmstar").judge.parse("probably the blue one", {"A": "red", "B": "green"}) is None
    assert benchmarks.get("mmstar").judge.parse("Z", {"A": "red", "B": "green"}) == "Z"  # none: an answer
    assert benchmarks.get("pope").judge.parse("Unknown", {}) == "Unknown"
    assert benchmarks.get("pope").judge.parse("It depends", {}) is None
    assert benchmarks.get("dynamath").judge.parse("about two", dyna("x")) is None
    assert benchmarks.get("mathvista_mini").judge.parse("  ", vista_choice("x")) is None
