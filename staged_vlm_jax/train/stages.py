"""The stage loop: run a config's stages in order, checkpointed, resumable, evaluated after each stage.

Per stage (``config.schedule`` order): a fresh `Learner` over the current weights — the stage's trainable regexes
pick what trains (the paper freezes the vision tower in text-reasoning stages and the merged baseline), a fresh
optimizer, and the KL reference = the weights at the stage's start; a Grain prompt stream over the stage's data
(its own seed, order and repeats); the step function of the stage's kind (`kinds.STAGE_KINDS`); then, at the end,
greedy evaluation on the held-out sets. Step t of the run draws its randomness from ``fold_in(key(seed), t)``.

Resume: the workdir's latest checkpoint names the stage, the step within it and the prompt iterator's state;
the run rebuilds that stage exactly (weights, optimizer, reference, data position) and continues, truncating
metrics.jsonl to the checkpoint's step, so an interrupted run writes the same metrics and ends with the same
weights as an uninterrupted one. A changed config is refused (naming the keys) unless explicitly allowed. A run
branched from another (``branch_from``, `branch`) resumes the same way from the other run's stage end.

Workdir (see `workdir`): ``config.json``, ``metrics.jsonl``, ``data_errors.jsonl`` (rows dropped, with reasons),
``tensorboard/``, ``checkpoints/``, ``eval.jsonl``, ``results.md``, ``plots/`` (by `staged-vlm plot`),
``jax_cache/`` (persistent compilation cache), and for the testbed ``data/`` and ``tokenizer/``.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import tqdm
from flax import nnx

from staged_vlm_jax import compile_cache, models
from staged_vlm_jax.data.pipeline import DataSource, PipelineConfig, PromptIterator, prompt_pipeline
from staged_vlm_jax.data.screen import OVERLONG, DataErrorLog, DataScreen
from staged_vlm_jax.eval import benchmarks
from staged_vlm_jax.eval.suite import SuiteRunner, SuiteSpec
from staged_vlm_jax.models.sharding import make_mesh
from staged_vlm_jax.paths import PathLike, as_path
from staged_vlm_jax.rl.learner import Learner
from staged_vlm_jax.rl.rewards import RewardPool
from staged_vlm_jax.rl.rollout import RolloutEngine
from staged_vlm_jax.train import config as config_lib
from staged_vlm_jax.train import workdir as workdir_lib
from staged_vlm_jax.train.branch import branch
from staged_vlm_jax.train.checkpoint import Checkpointer, IncompatibleCheckpointError, silence_cancelled_reads
from staged_vlm_jax.train.evaluation import HeldOutEvaluation
from staged_vlm_jax.train.export import abstract_model, model_config
from staged_vlm_jax.train.kinds import STAGE_KINDS
from staged_vlm_jax.train.metrics import MetricsWriter
from staged_vlm_jax.train.plan import StagePlan, data_source, plan_stages, plan_summary, screened_rows
from staged_vlm_jax.train.watch import CollapseError, CollapseWatch

DATA_ERRORS = "data_errors.jsonl"


class DamagedCheckpointsError(RuntimeError):
    """Every checkpoint of the workdir is damaged: nothing to resume from, and starting over silently is not an
    option."""


@dataclasses.dataclass(frozen=True)
class _StageStart:
    """A stage ready to train: its learner, its prompt stream, and the stage step it continues after."""

    learner: Learner
    prompts: PromptIterator
    step: int


class _NoMetrics:
    """What hosts other than the first write metrics with: nothing (the first host writes the run's files)."""

    def write(self, record: dict) -> None:
        pass

    def truncate(self, last_global_step: int) -> int:
        return 0

    def close(self) -> None:
        pass


class StagedRun:
    """One run of a config in a workdir (see the module docstring); `run` trains to the end and returns the
    evaluations."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: PathLike,
        *,
        branch_from: tuple[PathLike, str] | None = None,
        allow_config_change: bool = False,
        allow_data_change: bool = False,
    ) -> None:
        self.workdir = as_path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if branch_from is not None:  # (source workdir, last shared stage): `branch.branch`
            branch(config, self.workdir, *branch_from)
        self.spec = config_lib.resolve(config, self.workdir)
        if self.spec.eval.benchmarks and jax.process_count() > 1:  # every process would append the same answers
            raise config_lib.ConfigKeyError("config.eval.benchmarks: stage-end benchmarks run in one process; score "
                                            "a multi-host run's checkpoints with `staged-vlm eval`")  # fmt: skip
        workdir_lib.check_config(self.workdir, config, allow_config_change)
        self.config_hash = config_lib.config_hash(config)
        compile_cache.enable(self.spec.compilation_cache)
        workdir_lib.write_synthetic_data(self.spec, self.workdir)
        workdir_lib.check_inputs(self.spec)
        self.tokenizer = workdir_lib.tokenizer(self.spec, self.workdir)
        self.eos_token_ids = tuple(dict.fromkeys([self.tokenizer.eos_token_id, self.tokenizer.pad_token_id]))
        self.mesh = make_mesh(dict(self.spec.mesh))
        self.rules = self.spec.rules()
        self.engine = RolloutEngine(self.spec.engine_config(), self.mesh, self.rules)
        self.images = self.spec.image_inputs()
        self.screen = self._screen()
        self.data_fingerprints, self.allow_data_change = workdir_lib.data_fingerprints(self.spec), allow_data_change
        self.plan = plan_stages(self.spec, screened_rows(self.spec, self.screen))
        self.checkpointer = Checkpointer(
            self.workdir / "checkpoints",
            keep=self.spec.checkpoint.keep,
            stage_end_steps=tuple(stage.last_global_step for stage in self.plan),
            async_save=self.spec.checkpoint.async_save,
        )
        self.evaluation = HeldOutEvaluation(self.spec, self.workdir, plan_summary(self.plan))
        self._pools: dict[config_lib.RewardSpec, RewardPool] = {}

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        return self.evaluation.rows

    def total_steps(self) -> int:
        return sum(plan.steps for plan in self.plan)

    # -- what the stage kinds' trainers use (`kinds.StageRun`) ----------------------------------------------------

    def score_function(self, stage: str | None = None) -> Callable:
        """The reward scorer of ``stage`` (the run's reward when None), one process pool per distinct reward."""
        reward = self.spec.reward if stage is None else self.spec.stage_reward(stage)
        if reward not in self._pools:
            self._pools[reward] = RewardPool(reward.name, num_workers=reward.num_workers, timeout_s=reward.timeout_s,
                                             memory_limit_mb=reward.memory_limit_mb or None,
                                             cpu_limit_s=reward.cpu_limit_s or None)  # fmt: skip
        return self._pools[reward].score

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- setup --------------------------------------------------------------------------------------------------

    def _screen(self) -> DataScreen:
        """Every source the run reads, screened before anything trains (`screen.DataScreen`): a bad row stops the
        run here under ``data.on_error="raise"``; what was dropped is summed up on stderr and listed in
        data_errors.jsonl."""
        data, first = self.spec.data, jax.process_index() == 0
        log = DataErrorLog(self.workdir / DATA_ERRORS) if first else None
        screen = DataScreen(self.tokenizer, self.images, data.max_prompt_length, data.on_error,
                            verify_images=data.verify_images, log=log)  # fmt: skip
        names = dict.fromkeys([*(s for n in self.spec.schedule for s in self.spec.stages[n].data),
                               *self.spec.eval.sources])  # fmt: skip
        for name in names:
            screened = screen(data_source(self.spec, name))
            if first and (screened.dropped or screened.duplicates):
                print(f"data: {screened.summary()} (listed in {log.path})", file=sys.stderr)
        return screen

    def _initial_model(self) -> nnx.Module:
        model = self.spec.model
        if model.path:
            return models.load_hf(model.path, dtype=model.dtype, mesh=self.mesh, rules=self.rules)[0]
        return models.create(model_config(self.spec), dtype=model.dtype, seed=self.spec.seed)

    def _prompts(self, sources: list[DataSource], batch_size: int, seed: int, **options) -> PromptIterator:
        """The global prompt stream, the same in every process: hosts run the same host logic on the same batch
        (one process or many give the same run) and place only their own devices' shards."""
        data = self.spec.data
        return prompt_pipeline(
            PipelineConfig(
                sources=tuple(sources), batch_size=batch_size, seed=seed, shard_index=0, shard_count=1,
                prompt_buckets=data.prompt_buckets, max_prompt_length=data.max_prompt_length,
                images=self.images, on_error=data.on_error, worker_threads=data.worker_threads,
                **options,
            ),
            self.tokenizer,
            self.screen,
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
        resumed = self._resume()
        if resumed is None:
            metrics.truncate(0)
            model, start, first_stage = self._initial_model(), None, 0
            self.watch = CollapseWatch(self.spec.watch, model.cfg.text.vocab_size)
            if self.spec.eval.before_training:
                self._evaluate(model, "initial", -1, 0)
        else:
            meta, model, start = resumed
            self.watch = CollapseWatch(self.spec.watch, model.cfg.text.vocab_size)
            self.watch.restore(meta.get("watch", {}))  # absent from checkpoints written before the watch
            metrics.truncate(meta["global_step"])
            self.evaluation.restore(meta["evaluations"])
            first_stage = meta["stage_index"] + (1 if meta["stage_done"] else 0)
        for plan in self.plan[first_stage:]:
            model = self._run_stage(plan, start or self._start_stage(plan, model), metrics)
            start = None
        self.evaluation.write()  # results.md holds the stage table even for a run without held-out sets
        return self.evaluations

    def _resume(self) -> tuple[dict[str, Any], nnx.Module, _StageStart | None] | None:
        """The newest intact checkpoint's meta, weights and (when it is mid-stage) the stage restored to it; None
        without checkpoints. A damaged checkpoint is reported in one line, set aside, and the next older one tried."""
        steps = self.checkpointer.all_steps()
        for step in reversed(steps):
            try:
                meta = self.checkpointer.meta(step)
                workdir_lib.check_data(meta.get("data_fingerprints", {}), self.data_fingerprints,
                                       f"{self.checkpointer.directory}/{step}", self.allow_data_change)  # fmt: skip
                model = self.checkpointer.restore_model(step, abstract_model(self.spec), self.mesh, self.rules)
                start = None if meta["stage_done"] else self._start_stage(self.plan[meta["stage_index"]], model, meta)
                return meta, model, start
            except (IncompatibleCheckpointError, workdir_lib.DataChangedError, RuntimeError, MemoryError):
                raise  # intact but not this config's, or out of memory: an older checkpoint would hide the mistake
            except Exception as error:  # Orbax / TensorStore / JSON errors of missing, truncated or corrupt files
                # TensorStore's messages run on with a pointer to "full details"; the first sentence says what failed.
                reason = (
                    (str(error).strip().splitlines() or [type(error).__name__])[0]
                    .split(" See full")[0]
                    .rstrip(".")[:300]
                )
                silence_cancelled_reads()
                aside = self.checkpointer.set_aside(step)
                print(f"{self.checkpointer.directory}/{step}: damaged checkpoint ({reason}); moved to {aside}, "
                      "resuming from the previous one", file=sys.stderr)  # fmt: skip
        if steps:
            raise DamagedCheckpointsError(
                f"{self.checkpointer.directory}: every checkpoint ({', '.join(map(str, steps))}) is damaged (moved to "
                f"{self.checkpointer.directory}.damaged); remove the workdir's checkpoints to start over"
            )
        return None

    def _start_stage(self, plan: StagePlan, model: nnx.Module, resume: dict[str, Any] | None = None) -> _StageStart:
        """A stage ready to train: a fresh learner over ``model`` and the stage's prompt stream, or with ``resume``
        (a mid-stage checkpoint's meta) the optimizer, KL reference and data position it recorded."""
        stage = plan.spec
        learner = Learner(model, self.spec.stage_learner(plan.name), self.mesh, self.rules)
        sources = [data_source(self.spec, source, stage.data[source]) for source in stage.sources()]
        prompts = self._prompts(sources, stage.batch_size, self.spec.seed + 1000 * (plan.index + 1),
                                num_epochs=None, order=stage.order, drop_solved=stage.drop_solved)  # fmt: skip
        if resume is None:
            return _StageStart(learner, prompts, 0)
        try:
            self.checkpointer.restore_optimizer(resume["global_step"], learner)
            prompts.set_state(resume["data_state"])
        except BaseException:
            prompts.close()
            raise
        return _StageStart(learner, prompts, resume["stage_step"])

    def _run_stage(self, plan: StagePlan, start: _StageStart, metrics: MetricsWriter) -> nnx.Module:
        stage, name = plan.spec, plan.name
        learner, prompts, start_step = start.learner, start.prompts, start.step
        step_fn = STAGE_KINDS[stage.kind].make_step(self, name, stage, self.spec.stage_rollout(name), learner, prompts)
        rollout_traces = self.engine.num_compilations
        every, validate_every = self.spec.checkpoint.every_steps, self.spec.eval.every_steps
        with tqdm.tqdm(total=plan.steps, initial=start_step, desc=f"stage {plan.index + 1}/{len(self.plan)} {name}",
                       unit="step", dynamic_ncols=True) as progress:  # fmt: skip
            for stage_step in range(start_step + 1, plan.steps + 1):
                global_step = plan.first_global_step + stage_step
                record = step_fn(jax.random.fold_in(jax.random.key(self.spec.seed), global_step))
                record.update(stage=name, stage_index=plan.index, stage_step=stage_step, global_step=global_step)
                record.update(_data_counters(prompts))
                # Programs traced in this stage by this process so far (a recompile shows as a rise mid-stage).
                record["compile/rollout_traces"] = self.engine.num_compilations - rollout_traces
                record["compile/train_traces"] = learner.num_compilations
                # Evaluated before the step's record is written, so its scores are part of it (val/<set>/<score>).
                if stage_step == plan.steps and stage.evaluate:
                    model = learner.model()
                    record.update(self._evaluate(model, name, plan.index, global_step))
                    record.update(self._benchmarks(model, name))
                elif validate_every and global_step % validate_every == 0 and stage_step < plan.steps:
                    record.update(self._evaluate(learner.model(), f"{name} step {stage_step}", plan.index,
                                                 global_step))  # fmt: skip
                metrics.write(record)
                progress.update()
                progress.set_postfix({k: f"{record[k]:.3f}" for k in ("reward/mean", "nll") if k in record})
                if record.get("skipped_updates"):
                    progress.write(f"step {global_step}: {int(record['skipped_updates'])} update(s) skipped "
                                   f"(non-finite loss or gradients; grad_norm {record.get('grad_norm')})")  # fmt: skip
                collapse = self.watch(record)
                if collapse:
                    self._stop_collapsed(f"stage {name} step {stage_step} (global step {global_step}): {collapse}",
                                         self.watch.collapsed_from(global_step))  # fmt: skip
                if stage_step % every == 0 and stage_step < plan.steps:
                    self._save(global_step, learner, plan, stage_step, prompts, done=False)
        model = learner.model()
        self._save(plan.last_global_step, learner, plan, plan.steps, prompts, done=True)
        prompts.close()
        return model

    def _save(self, global_step: int, learner: Learner, plan: StagePlan, stage_step: int, prompts, done: bool):
        meta = {
            "stage_index": plan.index, "stage": plan.name, "stage_step": stage_step, "stage_done": done,
            "global_step": global_step, "seed": self.spec.seed, "config_hash": self.config_hash,
            "data_state": prompts.get_state(), "evaluations": self.evaluations, "watch": self.watch.state(),
            "data_fingerprints": self.data_fingerprints,
        }  # fmt: skip
        self.checkpointer.save(global_step, learner, meta)

    def _stop_collapsed(self, collapse: str, first_dead_step: int) -> None:
        """Sets aside the checkpoints from ``first_dead_step`` on (they may hold the collapsed weights) and raises
        `CollapseError`, naming the step a rerun resumes from."""
        self.checkpointer.wait()
        dead = [step for step in self.checkpointer.all_steps() if step >= first_dead_step]
        for step in dead:
            self.checkpointer.set_aside(step, "collapsed")
        healthy = self.checkpointer.all_steps()
        moved = f"checkpoints {dead} moved to {self.checkpointer.directory}.collapsed; " if dead else ""
        resume = f"a rerun resumes from step {healthy[-1]}" if healthy else "a rerun starts over"
        raise CollapseError(f"{collapse}; the run stopped. {moved}{resume} (fix the config, e.g. "
                            "learner.learning_rate, and rerun with --allow-config-change)")  # fmt: skip

    def _benchmarks(self, model: nnx.Module, stage: str) -> dict[str, float]:
        """``config.eval.benchmarks`` answered by ``model`` at a stage end, as `staged-vlm eval` would (greedy, the
        format instruction as system prompt, resumable) into ``<workdir>/benchmarks/<stage>/``; their headline
        scores as ``bench/<name>/<score>`` metrics."""
        held_out = self.spec.eval
        if not held_out.benchmarks:
            return {}
        spec = SuiteSpec(benchmarks=dict(held_out.benchmarks), batch_size=held_out.batch_size,
                         max_new_tokens=held_out.max_new_tokens or self.spec.rollout.max_new_tokens,
                         prompt_buckets=self.spec.data.prompt_buckets)  # fmt: skip
        runner = SuiteRunner(spec, model, self.tokenizer, self.images, self.engine)
        scores = runner.run(self.workdir / "benchmarks" / stage, held_out.benchmark_limit or None)
        headline = {name: benchmarks.get(name).headline for name in scores}
        return {f"bench/{name}/{key}": scores[name][key] for name, key in headline.items()}

    def _evaluate(self, model: nnx.Module, after: str, stage_index: int, global_step: int) -> dict[str, float]:
        batch_size = self.spec.eval.batch_size
        return self.evaluation.run(
            model, after, stage_index, global_step, engine=self.engine, score=self.score_function(),
            decode=self.decode, eos_token_ids=self.eos_token_ids, pad_token_id=self.tokenizer.pad_token_id,
            prompts=lambda name: self._prompts([data_source(self.spec, name)], batch_size, seed=0, num_epochs=1,
                                               drop_remainder=False),
        )  # fmt: skip


def _data_counters(prompts: PromptIterator) -> dict[str, int]:
    """What the stage's prompt stream has dropped: rows the start-up screen refused (over-long prompts, and bad
    rows under ``data.on_error="skip"``) and rows whose images failed to decode since."""
    dropped = sum((screened.dropped_by_reason() for screened in prompts.screened), collections.Counter())
    overlong = dropped.pop(OVERLONG, 0)
    return {"data/overlong_dropped": overlong, "data/read_errors": dropped.total(),
            "data/load_errors": sum(prompts.admission.load_errors.counts.values())}  # fmt: skip
