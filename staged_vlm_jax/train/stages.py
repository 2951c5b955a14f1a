"""The stage loop: run a config's stages in order, checkpointed, resumable, evaluated after each stage.

Per stage (``config.schedule`` order): a fresh `Learner` over the current weights — the stage's trainable regexes
pick what trains (the paper freezes the vision tower in text-reasoning stages and the merged baseline), a fresh
optimizer, and the KL reference = the weights at the stage's start; a Grain prompt stream over the stage's data
(its own seed, order and repeats); a GRPO or SFT trainer; then, at the end, greedy evaluation on the held-out
sets. Step t of the run draws its randomness from ``fold_in(key(seed), t)``.

Resume: the workdir's latest checkpoint names the stage, the step within it and the prompt iterator's state;
the run rebuilds that stage exactly (weights, optimizer, reference, data position) and continues, truncating
metrics.jsonl to the checkpoint's step, so an interrupted run writes the same metrics and ends with the same
weights as an uninterrupted one. A changed config is refused (naming the keys) unless explicitly allowed.

Workdir: ``config.json``, ``metrics.jsonl``, ``tensorboard/``, ``checkpoints/``, ``eval.jsonl``, ``results.md``,
``plots/`` (by `staged-vlm plot`), ``jax_cache/`` (persistent compilation cache), and for the testbed
``data/`` and ``tokenizer/``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import tqdm
from flax import nnx

from staged_vlm_jax import models
from staged_vlm_jax.data.images import SETTINGS
from staged_vlm_jax.data.pipeline import DataSource, PipelineConfig, prompt_pipeline
from staged_vlm_jax.data.schema import CAPABILITIES, SkipCounter
from staged_vlm_jax.data.sources import read_rows
from staged_vlm_jax.data.synthetic import write_synthetic
from staged_vlm_jax.data.tokenizer import build_tiny_tokenizer, load_tokenizer
from staged_vlm_jax.eval.runner import evaluate
from staged_vlm_jax.models.sharding import make_mesh
from staged_vlm_jax.rl.grpo import GRPOTrainer
from staged_vlm_jax.rl.learner import Learner
from staged_vlm_jax.rl.rewards import RewardPool
from staged_vlm_jax.rl.rollout import RolloutEngine
from staged_vlm_jax.rl.sft import SFTTrainer, sft_learner_config
from staged_vlm_jax.train import config as config_lib
from staged_vlm_jax.train.checkpoint import Checkpointer
from staged_vlm_jax.train.metrics import MetricsWriter
from staged_vlm_jax.train.results import write_results

CONFIG_FILE = "config.json"
EVAL_FILE = "eval.jsonl"


class ConfigMismatchError(ValueError):
    """The workdir holds a run of another config; resuming it with this one would silently mix two runs."""


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """A scheduled stage with its step count and its place in the run's global step count."""

    index: int
    name: str
    spec: config_lib.StageSpec
    steps: int
    first_global_step: int  # global step before this stage's first step

    @property
    def last_global_step(self) -> int:
        return self.first_global_step + self.steps


class _NoMetrics:
    """What hosts other than the first write metrics with: nothing (the first host writes the run's files)."""

    def write(self, record: dict) -> None:
        pass

    def truncate(self, last_global_step: int) -> int:
        return 0

    def close(self) -> None:
        pass


def _check_workdir_config(workdir: Path, config: ml_collections.ConfigDict, allow_change: bool) -> None:
    """Writes config.json (first host), or checks it against the one already there (a resume)."""
    path = workdir / CONFIG_FILE
    current = json.loads(config_lib.canonical(config))
    if path.exists():
        saved = json.loads(path.read_text())
        differences = config_lib.config_differences(saved, current)
        if differences and not allow_change:
            raise ConfigMismatchError(
                f"{path}: this workdir was run with another config; differing keys: {', '.join(differences)} "
                "(use another --workdir, or --allow-config-change to resume with the new values)"
            )
    if jax.process_index() == 0:
        path.write_text(config_lib.canonical(config) + "\n")


def model_config(spec: config_lib.RunSpec):
    """The architecture config of the run's model: the HF directory's, or the family's tiny one."""
    if spec.model.path:
        return models.read_config(spec.model.path)
    return models.tiny_config(spec.model.family, **spec.model.tiny)


def abstract_model(spec: config_lib.RunSpec) -> nnx.Module:
    """The run's model as shapes only (no memory): the target checkpoints restore into."""
    cfg = model_config(spec)
    return nnx.eval_shape(lambda: models.create(cfg, dtype=spec.model.dtype, seed=spec.seed))


def data_source(spec: config_lib.RunSpec, name: str, repeat: int = 1) -> DataSource:
    """The pipeline source of a ``data.sources`` or ``eval.sources`` entry."""
    source = spec.data.sources.get(name) or spec.eval.sources[name]
    return DataSource(source.path, source.capability, source.image_root or None, repeat=repeat)


def plan_stages(spec: config_lib.RunSpec) -> list[StagePlan]:
    """Every scheduled stage's step count — from the data sizes when not fixed (one cheap read of each file: images
    stay unopened) — and its offset in the run's global steps."""
    rows: dict[str, int] = {}
    plans, total = [], 0
    for index, name in enumerate(spec.schedule):
        stage = spec.stages[name]
        steps = stage.steps
        if not steps:
            for source_name in stage.data:
                if source_name not in rows:
                    source = data_source(spec, source_name)
                    rows[source_name] = sum(
                        1 for _ in read_rows(source.path, capability=source.capability, image_root=source.image_root,
                                             on_error="skip", skipped=SkipCounter())
                    )  # fmt: skip
            steps = sum(repeat * stage.epochs * rows[s] // stage.batch_size for s, repeat in stage.data.items())
            if steps < 1:
                raise config_lib.ConfigKeyError(
                    f"config.stages.{name}: its data ({', '.join(f'{s}: {rows[s]} rows' for s in stage.data)}) "
                    f"fills no batch of batch_size {stage.batch_size}"
                )
        plans.append(StagePlan(index, name, stage, steps, total))
        total += steps
    return plans


class StagedRun:
    """One run of a config in a workdir (see the module docstring); `run` trains to the end and returns the
    evaluations."""

    def __init__(
        self, config: ml_collections.ConfigDict, workdir: str | Path, *, allow_config_change: bool = False
    ) -> None:
        self.workdir = Path(workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.spec = config_lib.resolve(config, self.workdir)
        _check_workdir_config(self.workdir, config, allow_config_change)
        self.config_hash = config_lib.config_hash(config)
        jax.config.update("jax_compilation_cache_dir", self.spec.compilation_cache)
        self._write_synthetic_data()
        self.tokenizer = self._tokenizer()
        self.eos_token_ids = tuple(dict.fromkeys([self.tokenizer.eos_token_id, self.tokenizer.pad_token_id]))
        self.mesh = make_mesh(dict(self.spec.mesh))
        self.engine = RolloutEngine(self.spec.engine, self.mesh)
        self.image_settings = dataclasses.replace(
            SETTINGS[self.spec.model.family],
            min_pixels=self.spec.data.min_pixels,
            max_pixels=self.spec.data.max_pixels,
        )
        self.plan = plan_stages(self.spec)
        self.checkpointer = Checkpointer(
            self.workdir / "checkpoints",
            keep=self.spec.checkpoint.keep,
            stage_end_steps=tuple(stage.last_global_step for stage in self.plan),
            async_save=self.spec.checkpoint.async_save,
        )
        self._pools: dict[config_lib.RewardSpec, RewardPool] = {}
        self.evaluations: list[dict[str, Any]] = []

    # -- setup --------------------------------------------------------------------------------------------------

    def _write_synthetic_data(self) -> None:
        """The testbed's train and held-out sets, written once into workdir/data (atomically: a kill mid-write
        leaves no partial data set behind to be mistaken for a complete one)."""
        synthetic = self.spec.data.synthetic
        out = self.workdir / "data"
        if not synthetic.train_rows or out.exists():
            return
        if jax.process_count() > 1:
            raise config_lib.ConfigKeyError("config.data.synthetic: the testbed's data is for single-process runs")
        partial = self.workdir / "data.partial"
        shutil.rmtree(partial, ignore_errors=True)
        for split, rows, seed in (("train", synthetic.train_rows, synthetic.seed),
                                  ("eval", synthetic.eval_rows, synthetic.seed + 1)):  # fmt: skip
            for capability in CAPABILITIES if rows else ():
                write_synthetic(partial / split, capability, rows, seed=seed, image_size=synthetic.image_size,
                                max_difficulty=synthetic.max_difficulty)  # fmt: skip
        partial.rename(out)

    def _tokenizer(self):
        model = self.spec.model
        if model.tokenizer == "tiny":
            return build_tiny_tokenizer(self.workdir / "tokenizer")
        return load_tokenizer(model.tokenizer or model.path)

    def _source(self, name: str, repeat: int = 1) -> DataSource:
        return data_source(self.spec, name, repeat)

    def _initial_model(self) -> nnx.Module:
        model = self.spec.model
        if model.path:
            return models.load_hf(model.path, dtype=model.dtype, mesh=self.mesh)[0]
        return models.create(model_config(self.spec), dtype=model.dtype, seed=self.spec.seed)

    def _pool(self, reward: config_lib.RewardSpec) -> RewardPool:
        if reward not in self._pools:
            self._pools[reward] = RewardPool(reward.name, num_workers=reward.num_workers, timeout_s=reward.timeout_s)
        return self._pools[reward]

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _prompts(self, sources: list[DataSource], batch_size: int, seed: int, **options) -> Iterator:
        data = self.spec.data
        return prompt_pipeline(
            PipelineConfig(
                sources=tuple(sources), batch_size=batch_size // jax.process_count(), seed=seed,
                prompt_buckets=data.prompt_buckets, max_prompt_length=data.max_prompt_length,
                image_settings=self.image_settings, on_error=data.on_error, worker_threads=data.worker_threads,
                **options,
            ),
            self.tokenizer,
        )  # fmt: skip

    # -- the loop -----------------------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        metrics = MetricsWriter(self.workdir) if jax.process_index() == 0 else _NoMetrics()
        try:
            return self._run(metrics)
        finally:
            metrics.close()
            self.checkpointer.wait()
            self.checkpointer.close()
            for pool in self._pools.values():
                pool.close()

    def _run(self, metrics: MetricsWriter) -> list[dict[str, Any]]:
        latest = self.checkpointer.latest_step()
        resume: dict[str, Any] | None = None
        if latest is None:
            metrics.truncate(0)
            model = self._initial_model()
            if self.spec.eval.before_training:
                self._evaluate(model, "initial", -1, 0)
        else:
            resume = self.checkpointer.meta(latest)
            model = self.checkpointer.restore_model(latest, abstract_model(self.spec))
            metrics.truncate(latest)
            self.evaluations = resume["evaluations"]
            self._write_evaluations()
        for plan in self.plan:
            if resume is not None and (plan.index < resume["stage_index"] or
                                       (plan.index == resume["stage_index"] and resume["stage_done"])):  # fmt: skip
                continue
            start = resume if resume is not None and plan.index == resume["stage_index"] else None
            model = self._run_stage(plan, model, metrics, start)
            resume = None
        return self.evaluations

    def _run_stage(
        self, plan: StagePlan, model: nnx.Module, metrics: MetricsWriter, resume: dict[str, Any] | None
    ) -> nnx.Module:
        stage, name = plan.spec, plan.name
        learner_config = self.spec.stage_learner(name)
        if stage.kind == "sft":
            learner_config = sft_learner_config(learner_config)
        learner = Learner(model, learner_config, self.mesh)
        sources = [self._source(source, repeat) for source, repeat in stage.data.items()]
        prompts = self._prompts(sources, stage.batch_size, self.spec.seed + 1000 * (plan.index + 1),
                                num_epochs=None, order=stage.order, drop_solved=stage.drop_solved)  # fmt: skip
        start_step = 0
        if resume is not None:
            self.checkpointer.restore_optimizer(resume["global_step"], learner)
            prompts.set_state(resume["data_state"])
            start_step = resume["stage_step"]
        step_fn = self._step_function(plan, learner, prompts)
        every = self.spec.checkpoint.every_steps
        with tqdm.tqdm(total=plan.steps, initial=start_step, desc=f"stage {plan.index + 1}/{len(self.plan)} {name}",
                       unit="step", dynamic_ncols=True) as progress:  # fmt: skip
            for stage_step in range(start_step + 1, plan.steps + 1):
                global_step = plan.first_global_step + stage_step
                record = step_fn(jax.random.fold_in(jax.random.key(self.spec.seed), global_step))
                record.update(stage=name, stage_index=plan.index, stage_step=stage_step, global_step=global_step)
                record.update(self._data_counters(prompts))
                metrics.write(record)
                progress.update()
                progress.set_postfix({k: f"{record[k]:.3f}" for k in ("reward/mean", "nll") if k in record})
                if stage_step % every == 0 and stage_step < plan.steps:
                    self._save(global_step, learner, plan, stage_step, prompts, done=False)
        model = learner.model()
        if stage.evaluate:
            self._evaluate(model, name, plan.index, plan.last_global_step)
        self._save(plan.last_global_step, learner, plan, plan.steps, prompts, done=True)
        prompts.close()
        return model

    def _step_function(self, plan: StagePlan, learner: Learner, prompts) -> Callable[[jax.Array], dict[str, Any]]:
        """rng -> the metrics of one step of this stage's kind, drawing its prompts from ``prompts``."""
        if plan.spec.kind == "sft":
            trainer = SFTTrainer(learner, self.engine, self.tokenizer, plan.spec.response_template,
                                 eos_token_id=self.tokenizer.eos_token_id,
                                 pad_token_id=self.tokenizer.pad_token_id)  # fmt: skip
            return lambda rng: trainer.step(next(prompts))
        pool = self._pool(self.spec.stage_reward(plan.name))
        trainer = GRPOTrainer(learner, self.engine, pool.score, self._decode, self.spec.stage_rollout(plan.name),
                              eos_token_ids=self.eos_token_ids, pad_token_id=self.tokenizer.pad_token_id)  # fmt: skip
        return lambda rng: trainer.step(next(prompts), rng, refill=lambda: next(prompts))

    @staticmethod
    def _data_counters(prompts) -> dict[str, int]:
        state = prompts.admission.get_state()
        return {"data/overlong_dropped": state["overlong_dropped"],
                "data/load_errors": sum(state["load_errors"].values())}  # fmt: skip

    def _save(self, global_step: int, learner: Learner, plan: StagePlan, stage_step: int, prompts, done: bool):
        meta = {
            "stage_index": plan.index, "stage": plan.name, "stage_step": stage_step, "stage_done": done,
            "global_step": global_step, "seed": self.spec.seed, "config_hash": self.config_hash,
            "data_state": prompts.get_state(), "evaluations": self.evaluations,
        }  # fmt: skip
        self.checkpointer.save(global_step, learner, meta)

    # -- evaluation ---------------------------------------------------------------------------------------------

    def _evaluate(self, model: nnx.Module, after: str, stage_index: int, global_step: int) -> None:
        spec = self.spec.eval
        if not spec.sources:
            return
        reward = self._pool(self.spec.reward)
        max_new_tokens = spec.max_new_tokens or self.spec.rollout.max_new_tokens
        row: dict[str, Any] = {"after": after, "stage_index": stage_index, "global_step": global_step}
        for name in spec.sources:
            batches = self._prompts([self._source(name)], spec.batch_size, seed=0, num_epochs=1,
                                    drop_remainder=False)  # fmt: skip
            row[name] = evaluate(
                model, self.engine, batches, reward.score, self._decode, max_new_tokens=max_new_tokens,
                eos_token_ids=self.eos_token_ids, pad_token_id=self.tokenizer.pad_token_id,
            )  # fmt: skip
            batches.close()
        self.evaluations.append(row)
        self._write_evaluations()

    def _write_evaluations(self) -> None:
        if jax.process_index() != 0:
            return
        lines = [json.dumps(row, sort_keys=True) for row in self.evaluations]
        (self.workdir / EVAL_FILE).write_text("".join(line + "\n" for line in lines))
        write_results(self.workdir, self.evaluations, list(self.spec.eval.sources), self.plan_summary())

    def plan_summary(self) -> list[dict[str, Any]]:
        return [{"stage": p.name, "kind": p.spec.kind, "steps": p.steps, "trainable": list(p.spec.trainable)}
                for p in self.plan]  # fmt: skip

    def total_steps(self) -> int:
        return sum(plan.steps for plan in self.plan)


def export_hf(checkpoints: str | Path, out: str | Path, step: int | None = None) -> tuple[Path, int]:
    """Writes the weights of a run's checkpoint (``step``, default the latest) as a Hugging Face directory, with
    the run's tokenizer. ``checkpoints`` is the run's checkpoints/ directory or its workdir."""
    checkpoints = Path(checkpoints).absolute()
    if checkpoints.name != "checkpoints":
        checkpoints = checkpoints / "checkpoints"
    workdir = checkpoints.parent
    if not (workdir / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{workdir / CONFIG_FILE}: not found; --checkpoint must be a run's checkpoints/")
    spec = config_lib.resolve(json.loads((workdir / CONFIG_FILE).read_text()), workdir)
    checkpointer = Checkpointer(checkpoints, keep=1, stage_end_steps=(), async_save=False, read_only=True)
    steps = checkpointer.all_steps()
    if not steps or (step is not None and step not in steps):
        raise FileNotFoundError(f"{checkpoints}: no checkpoint{'' if step is None else f' at step {step}'} "
                                f"(saved steps: {steps})")  # fmt: skip
    step = steps[-1] if step is None else step
    model = checkpointer.restore_model(step, abstract_model(spec))
    checkpointer.close()
    path = models.save_hf(model, model_config(spec), out)
    tokenizer = spec.model.tokenizer
    tokenizer_dir = workdir / "tokenizer" if tokenizer == "tiny" else Path(tokenizer or spec.model.path)
    load_tokenizer(tokenizer_dir).save_pretrained(path)
    return path, step
