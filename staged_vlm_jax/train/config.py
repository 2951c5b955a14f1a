"""The run config: an ml-collections ConfigDict checked into typed, frozen specs, with one-line errors.

A run config (``configs/*.py``'s ``get_config()``) is plain data: the model, the data sources, the objective
(``learner``: `LearnerConfig` fields), the GRPO rollouts (``rollout``: `RolloutConfig` fields), the rollout engine's
shapes and memory bound (``engine``: `EngineConfig` fields; prompt lengths are bucketed by ``data.prompt_buckets``
alone), the reward, a table of named ``stages`` (each of a kind in `kinds.STAGE_KINDS`) and the ``schedule`` that
runs them in order, evaluation, checkpointing, and ``sharding_rules`` (overrides of `sharding.DEFAULT_RULES`).
`resolve` turns it into a `RunSpec`, rejecting any key it does not know with the dotted path and the closest valid
name — a typo never silently becomes a default. Paths may contain ``{workdir}``.

Two configs are the same run iff their `canonical` JSON is equal; `config_differences` names the keys that
differ (what a resume refuses).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections

from staged_vlm_jax.data import curriculum
from staged_vlm_jax.data.images import BACKENDS, IMAGE_RESIZES, ImageInputs, image_inputs
from staged_vlm_jax.data.schema import ON_ERROR_POLICIES
from staged_vlm_jax.eval import benchmarks
from staged_vlm_jax.models.sharding import DEFAULT_RULES, MeshAxes
from staged_vlm_jax.rl.grpo import RolloutConfig
from staged_vlm_jax.rl.learner import LearnerConfig, batch_split_error
from staged_vlm_jax.rl.rollout import EngineConfig
from staged_vlm_jax.train.kinds import STAGE_KINDS

# The SFT warm start's target: the paper's response format around the row's answer.
DEFAULT_SFT_TEMPLATE = "<think> Let me look at the problem. </think> The answer is \\boxed{{{answer}}}."


class ConfigKeyError(ValueError):
    """A config key that is unknown, missing or has an invalid value; the message names its dotted path."""


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A data file: ``path`` (jsonl/json/parquet/tsv/array_record dir), its capability, and the images' root;
    ``append_format`` False leaves its prompts without the think/boxed instruction (caption SFT)."""

    path: str
    capability: str
    image_root: str = ""
    append_format: bool = True


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Synthetic data written into the workdir before training (the CPU testbed); 0 rows writes nothing."""

    train_rows: int = 0
    eval_rows: int = 0
    image_size: int = 112
    seed: int = 0
    max_difficulty: float = 1.0


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Sources by name (stages refer to them), prompt length and buckets, image pixel budget, loading policy."""

    sources: dict[str, SourceSpec] = dataclasses.field(default_factory=dict)
    synthetic: SyntheticSpec = SyntheticSpec()
    max_prompt_length: int = 2048
    prompt_buckets: tuple[int, ...] = (256, 512, 1024, 2048)
    min_pixels: int = 512 * 512
    max_pixels: int = 2048 * 2048
    image_resize: str = "easyr1"  # an `images.IMAGE_RESIZES` name: where [min_pixels, max_pixels] apply
    image_backend: str = "pil"  # the processor's resize kernel, an `images.BACKENDS` name
    worker_threads: int = 0
    on_error: str = "raise"
    verify_images: bool = False  # decode every image at start-up (the screen reads only their headers)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """``path``: a local HF directory; empty = random init of the family's tiny config with ``tiny`` overrides.
    ``tokenizer``: a local tokenizer directory; empty = the model's; "tiny" = the offline tiny BPE."""

    family: str = "qwen2_5_vl"
    path: str = ""
    dtype: str = "float32"
    tokenizer: str = ""
    tiny: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """A registered reward (`rewards.REWARDS`) or your own (``FILE.py:FUNCTION``), scored in ``num_workers``
    processes with a per-item timeout, each worker's memory and each item's CPU time limited by the kernel
    (`RewardPool`; 0 lifts a limit)."""

    name: str = "math"
    num_workers: int = 4
    timeout_s: float = 5.0
    memory_limit_mb: int = 4096
    cpu_limit_s: float = 60.0


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage: its kind (GRPO or SFT), data (source name -> repeats per epoch), length, parameters to train,
    and overrides of the run's ``learner`` / ``rollout`` / ``reward`` sections.

    ``steps`` 0 derives the step count from the data as EasyR1's dataloader does (``drop_last`` per epoch):
    epochs · ⌊Σ over sources of repeat · rows / batch_size⌋ (`data.curriculum`). ``order`` is a
    `curriculum.ORDERS` name; ``source_order`` the order the sources are concatenated in (default: sorted by
    name), which ``order="difficulty_per_source"`` follows.
    """

    data: dict[str, int]
    batch_size: int
    kind: str = "grpo"
    epochs: int = 1
    steps: int = 0
    order: str = "shuffle"
    source_order: tuple[str, ...] = ()
    drop_solved: bool = False
    trainable: tuple[str, ...] = (r".*",)
    learner: dict[str, Any] = dataclasses.field(default_factory=dict)
    rollout: dict[str, Any] = dataclasses.field(default_factory=dict)
    reward: dict[str, Any] = dataclasses.field(default_factory=dict)
    response_template: str = DEFAULT_SFT_TEMPLATE
    evaluate: bool = True

    def sources(self) -> tuple[str, ...]:
        """The stage's data sources in concatenation order."""
        return self.source_order or tuple(sorted(self.data))


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """Held-out sets evaluated before training (``before_training``), after each stage and, with ``every_steps``
    K > 0, every K global steps within stages (validation, as the paper's geometry3k runs): greedy at
    ``temperature`` 0, else one sample per prompt at that temperature and ``top_p``. ``benchmarks`` (a registered
    benchmark name -> its local file, as `staged-vlm eval` reads) are answered greedily at every stage end, the
    first ``benchmark_limit`` records of each (0: all), into ``<workdir>/benchmarks/<stage>/``."""

    sources: dict[str, SourceSpec] = dataclasses.field(default_factory=dict)
    batch_size: int = 16
    max_new_tokens: int = 0  # 0: the run's rollout.max_new_tokens
    before_training: bool = True
    every_steps: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    benchmarks: dict[str, str] = dataclasses.field(default_factory=dict)
    benchmark_limit: int = 0


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    """Orbax checkpoints every ``every_steps`` optimizer steps and at every stage end; the latest ``keep`` of the
    periodic ones are kept, stage ends always."""

    every_steps: int = 50
    keep: int = 2
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class WatchSpec:
    """When a run stops as collapsed (`watch.CollapseWatch`): after this many consecutive steps of one symptom;
    0 turns a check off. ``uniform_entropy``: the share of ln(vocab size) at or above which the policy counts as
    uniform (a collapse only if the stage did not start there, as a random-init model does)."""

    skipped_steps: int = 3
    zero_grad_steps: int = 3
    uniform_steps: int = 3
    uniform_entropy: float = 0.98


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A whole run, resolved: every section typed and validated."""

    stages: dict[str, StageSpec]
    schedule: tuple[str, ...]
    seed: int = 0
    model: ModelSpec = ModelSpec()
    mesh: dict[str, int] = dataclasses.field(default_factory=lambda: {"data": -1, "fsdp": 1, "tensor": 1})
    data: DataSpec = DataSpec()
    engine: EngineConfig = EngineConfig()
    rollout: RolloutConfig = RolloutConfig()
    learner: LearnerConfig = LearnerConfig()
    reward: RewardSpec = RewardSpec()
    eval: EvalSpec = EvalSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    watch: WatchSpec = WatchSpec()
    compilation_cache: str = "{workdir}/jax_cache"
    sharding_rules: dict[str, Any] = dataclasses.field(default_factory=dict)

    def stage_learner(self, name: str) -> LearnerConfig:
        """The learner config stage ``name`` trains with: the run's, its overrides, then its kind's settings."""
        stage = self.stages[name]
        learner = build_over(self.learner, {"trainable": stage.trainable, **stage.learner}, f"stages.{name}.learner")
        return STAGE_KINDS[stage.kind].learner_config(learner)

    def stage_rollout(self, name: str) -> RolloutConfig:
        return build_over(self.rollout, self.stages[name].rollout, f"stages.{name}.rollout")

    def stage_reward(self, name: str) -> RewardSpec:
        return build_over(self.reward, self.stages[name].reward, f"stages.{name}.reward")

    def engine_config(self) -> EngineConfig:
        """The rollout engine's config, its prompt buckets the data's (one bucket list for the whole run)."""
        return dataclasses.replace(self.engine, prompt_buckets=self.data.prompt_buckets)

    def input_paths(self) -> list[tuple[str, str]]:
        """(config key, path) of everything the run reads: the model directory's config.json, the tokenizer
        directory, the scheduled stages' data files and images' roots, the evaluation sets and benchmark files."""
        used = {source for name in self.schedule for source in self.stages[name].data}
        paths = []
        if self.model.path:
            paths.append(("config.model.path", os.path.join(self.model.path, "config.json")))
        if self.model.tokenizer not in ("", "tiny"):
            paths.append(("config.model.tokenizer", self.model.tokenizer))
        for section, sources in (("data", {k: v for k, v in self.data.sources.items() if k in used}),
                                 ("eval", self.eval.sources)):  # fmt: skip
            for name, source in sources.items():
                paths.append((f"config.{section}.sources.{name}.path", source.path))
                if source.image_root:
                    paths.append((f"config.{section}.sources.{name}.image_root", source.image_root))
        paths += [(f"config.eval.benchmarks.{name}", path) for name, path in self.eval.benchmarks.items()]
        return paths

    def image_inputs(self) -> ImageInputs:
        """How the run's images become model inputs: the model family's processor, ``data.image_resize`` deciding
        where [min_pixels, max_pixels] apply, ``data.image_backend``'s resize kernel."""
        data = self.data
        return image_inputs(self.model.family, data.image_resize, data.min_pixels, data.max_pixels, data.image_backend)

    def rules(self) -> dict[str, MeshAxes]:
        """The sharding rules: `sharding.DEFAULT_RULES` with ``sharding_rules`` applied (lists become tuples)."""
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in self.sharding_rules.items()}
        return {**DEFAULT_RULES, **overrides}


def unknown_key(key: str, valid: typing.Iterable[str], where: str) -> ConfigKeyError:
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"; did you mean {where}.{close[0]}?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigKeyError(f"{where}.{key}: unknown config key{hint}")


def _convert(kind: Any, value: Any, where: str) -> Any:
    """``value`` as the annotated type ``kind``: nested dataclasses built strictly, sequences as tuples."""
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        return build(kind, value, where)
    if origin is dict:
        _, item_kind = typing.get_args(kind)
        if not isinstance(value, Mapping):
            raise ConfigKeyError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _convert(item_kind, v, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple and value is not None:
        return tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def build(cls: type, value: Mapping[str, Any], where: str):
    """``cls(**value)`` with every key checked: unknown keys and missing required ones raise `ConfigKeyError`."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise ConfigKeyError(f"{where}: expected a mapping of {cls.__name__} fields, got {value!r}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            raise unknown_key(key, fields, where)
    missing = [
        name
        for name, field in fields.items()
        if name not in value and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigKeyError(f"{where}.{missing[0]}: required config key is missing")
    hints = typing.get_type_hints(cls)
    try:
        return cls(**{key: _convert(hints[key], item, f"{where}.{key}") for key, item in value.items()})
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigKeyError):
            raise
        raise ConfigKeyError(f"{where}: {error}") from error


def build_over(base, overrides: Mapping[str, Any], where: str):
    """``base`` (a dataclass instance) with ``overrides`` applied, keys checked as in `build`; an override of None
    is not one (a stage's unset placeholder: the run's value stands)."""
    return build(type(base), {**dataclasses.asdict(base), **{k: v for k, v in overrides.items() if v is not None}},
                 where)  # fmt: skip


def _with_workdir(value: Any, workdir: str) -> Any:
    if isinstance(value, str):
        return value.replace("{workdir}", workdir)
    if isinstance(value, dict):
        return {k: _with_workdir(v, workdir) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_workdir(v, workdir) for v in value]
    return value


def resolve(config: ml_collections.ConfigDict | Mapping[str, Any], workdir: str | os.PathLike) -> RunSpec:
    """The typed run of ``config`` (``{workdir}`` substituted), with every cross-reference checked."""
    raw = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    if "prompt_buckets" in raw.get("engine", {}):
        raise ConfigKeyError("config.engine.prompt_buckets: prompt lengths are bucketed by config.data.prompt_buckets "
                             "alone; set them there")  # fmt: skip
    spec: RunSpec = build(RunSpec, _with_workdir(raw, str(workdir)), "config")
    for name in spec.sharding_rules:
        if name not in DEFAULT_RULES:
            raise unknown_key(name, DEFAULT_RULES, "config.sharding_rules")
    if "trainable" in raw.get("learner", {}):
        raise ConfigKeyError("config.learner.trainable: each stage says what it trains; set "
                             "config.stages.NAME.trainable instead")  # fmt: skip
    data = spec.data
    for key, choices in (("image_resize", IMAGE_RESIZES), ("image_backend", BACKENDS), ("on_error", ON_ERROR_POLICIES)):
        if getattr(data, key) not in choices:
            raise ConfigKeyError(f"config.data.{key}: {getattr(data, key)!r} is not one of {sorted(choices)}")
    if not 0 < data.min_pixels <= data.max_pixels:
        raise ConfigKeyError(f"config.data.min_pixels ({data.min_pixels}) and max_pixels ({data.max_pixels}) must be "
                             "positive with min_pixels <= max_pixels")  # fmt: skip
    if not spec.schedule:
        raise ConfigKeyError("config.schedule: empty; list the stages to run, in order")
    for name in spec.schedule:
        if name not in spec.stages:
            raise unknown_key(name, spec.stages, "config.stages")
        stage = spec.stages[name]
        where = f"config.stages.{name}"
        if stage.kind not in STAGE_KINDS:
            raise ConfigKeyError(f"{where}.kind: {stage.kind!r} is not one of {sorted(STAGE_KINDS)}")
        for source in stage.data:
            if source not in spec.data.sources:
                raise unknown_key(source, spec.data.sources, f"{where}.data (config.data.sources)")
        if "trainable" in stage.learner:
            raise ConfigKeyError(f"{where}.learner.trainable: set {where}.trainable instead")
        if stage.order not in curriculum.ORDERS:
            raise ConfigKeyError(f"{where}.order: {stage.order!r} is not one of {sorted(curriculum.ORDERS)}")
        if stage.source_order and sorted(stage.source_order) != sorted(stage.data):
            raise ConfigKeyError(f"{where}.source_order: {list(stage.source_order)} must list the stage's data "
                                 f"sources {sorted(stage.data)}, each once")  # fmt: skip
        if stage.batch_size < 1 or stage.epochs < 1 or stage.steps < 0:
            raise ConfigKeyError(f"{where}: batch_size and epochs must be >= 1 and steps >= 0")
        # Overrides are checked now, not when the stage starts hours later; so is the step's batch split.
        learner, rollout, reward = spec.stage_learner(name), spec.stage_rollout(name), spec.stage_reward(name)
        kind = STAGE_KINDS[stage.kind]
        problems = kind.problems(rollout, reward.name)
        if not (learner.learning_rate > 0 and math.isfinite(learner.learning_rate)):
            problems.append(f"learner.learning_rate: {learner.learning_rate}; must be positive and finite")
        if reward.num_workers < 1 or not reward.timeout_s > 0 or min(reward.memory_limit_mb, reward.cpu_limit_s) < 0:
            problems.append(f"reward: num_workers >= 1, timeout_s > 0, memory_limit_mb and cpu_limit_s >= 0 (0: no "
                            f"limit); got {reward}")  # fmt: skip
        if problems:  # the stage's value, from its own section or the run's
            raise ConfigKeyError(f"{where}: {problems[0]}")
        rows_per_prompt = kind.rows_per_prompt(rollout)
        error = batch_split_error(learner, stage.batch_size * rows_per_prompt)
        if error:
            raise ConfigKeyError(f"{where}: {error} (batch_size {stage.batch_size} prompts"
                                 + (f" × rollout.n={rows_per_prompt})" if rows_per_prompt > 1 else ")"))  # fmt: skip
    held_out = spec.eval
    for name in held_out.benchmarks:
        if name not in benchmarks.BENCHMARKS:
            raise unknown_key(name, benchmarks.BENCHMARKS, "config.eval.benchmarks")
    if held_out.every_steps < 0 or held_out.temperature < 0 or not 0 < held_out.top_p <= 1:
        raise ConfigKeyError(f"config.eval: every_steps ({held_out.every_steps}) and temperature "
                             f"({held_out.temperature}) must be >= 0, top_p ({held_out.top_p}) in (0, 1]")  # fmt: skip
    if spec.checkpoint.every_steps < 1 or spec.checkpoint.keep < 1:
        raise ConfigKeyError("config.checkpoint: every_steps and keep must be >= 1")
    watch = spec.watch
    if min(watch.skipped_steps, watch.zero_grad_steps, watch.uniform_steps) < 0 or not 0 < watch.uniform_entropy <= 1:
        raise ConfigKeyError(f"config.watch: step counts must be >= 0 (0: off), uniform_entropy in (0, 1]; got {watch}")
    return spec


def canonical(config: ml_collections.ConfigDict | Mapping[str, Any]) -> str:
    """The config as sorted JSON: what config.json stores and what a resume compares."""
    raw = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    return json.dumps(raw, sort_keys=True, indent=1, default=list)


def config_hash(config: ml_collections.ConfigDict | Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two configs (JSON-normalised), sorted."""
    saved_flat = _flatten(json.loads(json.dumps(saved, default=list)))
    current_flat = _flatten(json.loads(json.dumps(current, default=list)))
    return sorted(k for k in saved_flat.keys() | current_flat.keys() if saved_flat.get(k) != current_flat.get(k))
