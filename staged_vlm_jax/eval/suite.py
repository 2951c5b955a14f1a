"""`staged-vlm eval`: a model's greedy answers to the paper's benchmarks, scored officially, resumable, as Table 1.

For each benchmark of the config (name -> a local file: VLMEvalKit TSV or the official parquet), the records are
loaded and turned into VLMEvalKit's prompts (`benchmarks.Benchmark.question`), with the paper's protocol on top:
trained models get the think/``\\boxed{}`` instruction as the *system prompt*, base models no system prompt
(``system_prompt`` "format" / "none"). Answers are generated greedily by the rollout engine in batches and
appended to ``<workdir>/<benchmark>.jsonl`` one line per record (``index``, ``prediction``, ``response_tokens``)
as each batch finishes, so a killed run rerun on the same workdir answers only the records still missing and ends
with the same scores. Then each benchmark's official scorer runs over all its answers; ``scores.json`` holds every
score, ``table1.md`` the headline per benchmark, the visual-math and perception averages, their mean (Overall), the
extended suite's average (appendix Table 9) where it was evaluated, and the mean response length in tokens, as the
paper's Table 1.

With ``config.judge.url`` set, an LLM judge reads the responses the rules cannot, before scoring, as VLMEvalKit does
(`eval.judge`): its verdicts are added to the predictions file (appended as each arrives, then one line per record),
so a resumed evaluation asks only about records without a usable verdict of the same judge model; a failed request
leaves the record its rule-based score and is counted in ``scores.json`` (``judge/failed`` per benchmark).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import tqdm
from etils import epath
from flax import nnx
from transformers import PreTrainedTokenizerFast

from staged_vlm_jax.data.images import BACKENDS, IMAGE_RESIZES, ImageInputs
from staged_vlm_jax.data.images import image_inputs as family_image_inputs
from staged_vlm_jax.data.pipeline import Prompt, PromptBuilder, PromptCollator
from staged_vlm_jax.data.prompts import FORMAT_INSTRUCTION
from staged_vlm_jax.data.resumable import read_answers
from staged_vlm_jax.data.schema import RowLocation
from staged_vlm_jax.eval import benchmarks
from staged_vlm_jax.eval.judge import VERDICT, Judge, JudgeSpec, judge_records
from staged_vlm_jax.eval.runner import responses
from staged_vlm_jax.paths import as_path, write_atomic
from staged_vlm_jax.rl.rollout import EngineConfig, RolloutEngine
from staged_vlm_jax.train.results import markdown_table

# ``system_prompt``: the paper evaluates its trained models with the format instruction as the system prompt and
# base models without one.
SYSTEM_PROMPTS: dict[str, str | None] = {"format": FORMAT_INSTRUCTION, "none": None}
GROUPS = (("visual_math", "Visual math AVG"), ("perception", "Perception AVG"))  # Overall: their mean
EXTENDED = ("extended", "Extended AVG")  # the appendix's extended suite, outside Overall
RESPONSE_TOKENS = "response tokens"
TABLE_ONE = "table1"  # scores.json's key for the Table-1 row


@dataclasses.dataclass(frozen=True)
class SuiteSpec:
    """An evaluation: which benchmark files, how prompts are built, how answers are generated."""

    benchmarks: dict[str, str]
    dtype: str = "bfloat16"
    system_prompt: str = "format"
    max_new_tokens: int = 2048
    batch_size: int = 32
    prompt_buckets: tuple[int, ...] = (1024, 2048, 4096, 8192)
    min_pixels: int = 512 * 512
    max_pixels: int = 2048 * 2048
    image_resize: str = "easyr1"
    image_backend: str = "pil"
    mesh: dict[str, int] = dataclasses.field(default_factory=lambda: {"data": -1, "fsdp": 1, "tensor": 1})
    judge: JudgeSpec = dataclasses.field(default_factory=JudgeSpec)

    def problems(self) -> list[str]:
        """What is wrong with the spec, as ``key: message`` lines (checked before any model loads)."""
        problems = [f"benchmarks.{name}: not a registered benchmark ({sorted(benchmarks.BENCHMARKS)})"
                    for name in self.benchmarks if name not in benchmarks.BENCHMARKS]  # fmt: skip
        problems += [f"benchmarks.{name}: {path} not found" for name, path in self.benchmarks.items()
                     if not as_path(path).exists()]  # fmt: skip
        for key, value, choices in (("system_prompt", self.system_prompt, SYSTEM_PROMPTS),
                                    ("image_resize", self.image_resize, IMAGE_RESIZES),
                                    ("image_backend", self.image_backend, BACKENDS)):  # fmt: skip
            if value not in choices:
                problems.append(f"{key}: {value!r} is not one of {sorted(choices)}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            problems.append("max_new_tokens and batch_size must be >= 1")
        return problems + self.judge.problems()


def image_inputs(spec: SuiteSpec, model_type: str) -> ImageInputs:
    return family_image_inputs(model_type, spec.image_resize, spec.min_pixels, spec.max_pixels, spec.image_backend)


class SuiteRunner:
    """Answers and scores benchmarks with one model (module docstring)."""

    def __init__(self, spec: SuiteSpec, model: nnx.Module, tokenizer: PreTrainedTokenizerFast, images: ImageInputs,
                 engine: RolloutEngine) -> None:  # fmt: skip
        self.spec, self.model, self.tokenizer, self.images, self.engine = spec, model, tokenizer, images, engine
        self.eos_token_ids = tuple(dict.fromkeys([tokenizer.eos_token_id, tokenizer.pad_token_id]))
        self.collate = PromptCollator(tokenizer.pad_token_id, spec.prompt_buckets)
        self.builder = PromptBuilder(tokenizer, images, "raise")
        self.judge = Judge(spec.judge) if spec.judge.url is not None else None

    def prompt(self, bench: benchmarks.Benchmark, record: dict[str, Any], where: RowLocation) -> Prompt:
        question = bench.question(record, where)
        return self.builder.prompt(str(where), question.text, question.images, "", append_format=False,
                                   system_prompt=SYSTEM_PROMPTS[self.spec.system_prompt])  # fmt: skip

    def answer(self, name: str, path: epath.Path, out: epath.Path, limit: int | None = None) -> list[dict[str, Any]]:
        """Every record of benchmark ``name`` in ``path`` (the first ``limit``) with its answer; answers missing
        from ``out`` are generated and appended."""
        bench = benchmarks.get(name)
        records = bench.load(path)[:limit]
        answers = read_answers(out)
        todo = [index for index in range(len(records)) if index not in answers]

        chunks: collections.deque[list[int]] = collections.deque()  # the record indices of the batch in flight

        def batches() -> Iterator[Any]:
            for start in range(0, len(todo), self.spec.batch_size):
                chunks.append(todo[start : start + self.spec.batch_size])
                yield self.collate([self.prompt(bench, records[i], RowLocation(path, i)) for i in chunks[-1]])

        with tqdm.tqdm(total=len(records), initial=len(records) - len(todo), desc=f"eval {name}", unit="q",
                       dynamic_ncols=True) as progress, out.open("a") as file:  # fmt: skip
            for _, texts, lengths in responses(self.model, self.engine, batches(), self._decode,
                                               max_new_tokens=self.spec.max_new_tokens,
                                               eos_token_ids=self.eos_token_ids,
                                               pad_token_id=self.tokenizer.pad_token_id):  # fmt: skip
                rows = [{"index": index, "prediction": text, "response_tokens": int(length)}
                        for index, text, length in zip(chunks.popleft(), texts, lengths, strict=True)]  # fmt: skip
                file.write("".join(json.dumps(row) + "\n" for row in rows))
                file.flush()
                answers.update((row["index"], row) for row in rows)
                progress.update(len(rows))
        # The answer row's "index" is the record's position; the record keeps its own (a TSV's index column).
        return [{**record, **{key: value for key, value in answers[index].items() if key != "index"}}
                for index, record in enumerate(records)]  # fmt: skip

    def ask_judge(self, name: str, records: list[dict[str, Any]], out: epath.Path) -> dict[str, float]:
        """Asks the judge about the records of benchmark ``name`` its rules cannot read (`judge.judge_records`),
        saving each new verdict on its row of ``out``; returns the judge's counts (module docstring)."""
        task = benchmarks.get(name).judge
        if self.judge is None or task is None:
            return {}
        rows = read_answers(out)
        with tqdm.tqdm(desc=f"judge {name}", unit="q", dynamic_ncols=True) as progress, out.open("a") as file:

            def save(position: int, verdict: dict[str, str]) -> None:
                rows[position][VERDICT] = verdict
                file.write(json.dumps(rows[position]) + "\n")
                file.flush()

            counts = judge_records(self.judge, task, records, save, lambda done: progress.update(1))
        if counts["judge/asked"]:  # one line per record again, the verdicts in place
            write_atomic(out, "".join(json.dumps(row) + "\n" for row in rows.values()))
        if counts["judge/failed"]:
            first = next(row[VERDICT]["error"] for row in rows.values() if "error" in row.get(VERDICT, {}))
            failed, asked = int(counts["judge/failed"]), int(counts["judge/asked"])
            print(f"eval: judge: {failed} of {asked} {name} requests failed (e.g. {first}); those records keep their "
                  "rule-based score, a rerun asks again", file=sys.stderr)  # fmt: skip
        return counts

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def run(self, workdir: epath.Path, limit: int | None = None) -> dict[str, dict[str, float]]:
        """Answers and scores every benchmark; writes the predictions, scores.json and table1.md into ``workdir``."""
        workdir.mkdir(parents=True, exist_ok=True)
        scores, lengths = {}, []
        for name, path in self.spec.benchmarks.items():
            out = workdir / f"{name}.jsonl"
            answered = self.answer(name, as_path(path), out, limit)
            counts = self.ask_judge(name, answered, out)
            scores[name] = {**benchmarks.get(name).score(answered), **counts}
            lengths += [row["response_tokens"] for row in answered]
        row = table_one_row(scores, lengths)
        (workdir / "scores.json").write_text(json.dumps({**scores, TABLE_ONE: row}, indent=1) + "\n")
        (workdir / "table1.md").write_text("\n".join(table_one({workdir.name: row})) + "\n")
        return scores


def table_one_row(scores: dict[str, dict[str, float]], lengths: Sequence[int]) -> dict[str, float]:
    """The paper's Table 1 row for one model: each benchmark's headline score (visual math first, then
    perception, then the extended suite), each group's average over its benchmarks present, Overall (the mean of the
    visual-math and perception averages), the extended suite's average apart, and ``response tokens``, the mean
    response length over every answer (``lengths``)."""
    groups = (*GROUPS, EXTENDED)
    names = [name for group, _ in groups for name in scores if benchmarks.get(name).group == group]
    names += [name for name in scores if name not in names]
    row = {name: scores[name][benchmarks.get(name).headline] for name in names}

    def average(group: str) -> float | None:
        members = [row[name] for name in names if benchmarks.get(name).group == group]
        return sum(members) / len(members) if members else None

    averages = {label: mean for group, label in GROUPS if (mean := average(group)) is not None}
    if averages:
        averages["Overall"] = sum(averages.values()) / len(averages)
    if (extended := average(EXTENDED[0])) is not None:
        averages[EXTENDED[1]] = extended
    return {**row, **averages, RESPONSE_TOKENS: sum(lengths) / len(lengths)}


def table_one(rows: dict[str, dict[str, float]]) -> list[str]:
    """Markdown of Table-1 rows (label -> `table_one_row`), one column per key any row has, in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows.values() for key in row))
    cell = lambda row, key: "" if key not in row else f"{row[key]:.1f}" if key == RESPONSE_TOKENS else f"{row[key]:.2f}"
    return markdown_table(["model", *columns], [[label, *(cell(row, key) for key in columns)]
                                               for label, row in rows.items()])  # fmt: skip


def engine_config(spec: SuiteSpec) -> EngineConfig:
    """The rollout engine's buckets for an evaluation: the suite's prompt buckets, answers up to max_new_tokens."""
    return EngineConfig(prompt_buckets=spec.prompt_buckets, new_token_buckets=(spec.max_new_tokens,))
