"""The stage table, and the sizes of a run's compiled programs on a target topology (`staged-vlm plan`).

A stage's steps are fixed (``steps``) or follow from its data as EasyR1's dataloader makes them (every epoch cut
to whole batches, ``drop_last``): epochs · ⌊R / batch_size⌋ with R = Σ over its sources of repeat · rows. The
paper's staged recipe on 3,300 / 12,900 / 15,900 rows: 16 · 6 = 96, 15 · 25 = 375 and 15 · 31 = 465 steps; its
merged baseline, 15 epochs over the union: 15 · ⌊32,100 / 512⌋ = 930.

Sizing compiles, ahead of time and for shapes only, each stage's rollout program and train step at the config's
largest shapes (longest prompt bucket, the largest image a prompt can hold, ``max_new_tokens``) on a mesh of as
many devices as the target has, and reads XLA's buffer assignment (per-device arguments, temporaries, outputs)
and cost analysis. Nothing is allocated: the model is `nnx.eval_shape`'d from its config.json. The devices are
this host's CPU devices standing in for the target's (MaxText's ``train_compile.py`` does the same with a TPU
topology description, which needs libtpu): the partitioning is the target's, the byte counts XLA:CPU's, which
fuses differently from the GPU and TPU compilers, so treat them as estimates with a margin (``headroom``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable

import jax
import jax.numpy as jnp
from etils import epath
from flax import nnx

from staged_vlm_jax import models
from staged_vlm_jax.data.batch import bucket
from staged_vlm_jax.data.pipeline import DataSource
from staged_vlm_jax.data.schema import DataError, SkipCounter
from staged_vlm_jax.data.screen import DataScreen
from staged_vlm_jax.data.sources import read_rows
from staged_vlm_jax.data.tokenizer import TokenizerError
from staged_vlm_jax.models.sharding import batch_sharding, batch_shards, make_mesh
from staged_vlm_jax.rl.learner import Learner, LearnerConfig, TrainBatch, micro_batch_spread_warning
from staged_vlm_jax.rl.rollout import RolloutEngine
from staged_vlm_jax.train import config as config_lib
from staged_vlm_jax.train import workdir as workdir_lib
from staged_vlm_jax.train.export import model_config
from staged_vlm_jax.train.kinds import STAGE_KINDS
from staged_vlm_jax.train.workdir import write_synthetic_data


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


def data_source(spec: config_lib.RunSpec, name: str, repeat: int = 1) -> DataSource:
    """The pipeline source of a ``data.sources`` or ``eval.sources`` entry."""
    source = spec.data.sources.get(name) or spec.eval.sources[name]
    return DataSource(source.path, source.capability, source.image_root or None, repeat=repeat,
                      append_format=source.append_format)  # fmt: skip


def file_rows(spec: config_lib.RunSpec) -> Callable[[str], int]:
    """Rows per source name as the files hold them (malformed rows skipped; images and prompt lengths not looked
    at): the count `staged-vlm plan` falls back to without a tokenizer to screen with."""

    def count(name: str) -> int:
        source = data_source(spec, name)
        rows = read_rows(source.path, capability=source.capability, image_root=source.image_root, on_error="skip",
                         skipped=SkipCounter(), verify_images=False)  # fmt: skip
        return sum(1 for _ in rows)

    return count


def screened_rows(spec: config_lib.RunSpec, screen: DataScreen) -> Callable[[str], int]:
    """Usable rows per source name after ``screen`` (bad rows and over-long prompts dropped, as EasyR1 counts)."""
    return lambda name: len(screen(data_source(spec, name)).examples)


def stage_rows(stage: config_lib.StageSpec, rows: dict[str, int]) -> int:
    """Rows of one epoch of ``stage``, given its sources' row counts: Σ repeat · rows."""
    return sum(repeat * rows[source] for source, repeat in stage.data.items())


def stage_steps(stage: config_lib.StageSpec, rows: dict[str, int]) -> int:
    """A stage's step count given its sources' row counts (module docstring): fixed, or epochs · ⌊R / batch⌋."""
    return stage.steps or stage.epochs * (stage_rows(stage, rows) // stage.batch_size)


def plan_stages(spec: config_lib.RunSpec, rows: Callable[[str], int]) -> list[StagePlan]:
    """Every scheduled stage's step count and its offset in the run's global steps (module docstring), with each
    source's rows counted by ``rows`` (`screened_rows` for a run)."""
    counts: dict[str, int] = {}
    plans, total = [], 0
    for index, name in enumerate(spec.schedule):
        stage = spec.stages[name]
        if not stage.steps:
            for source_name in stage.data:
                if source_name not in counts:
                    counts[source_name] = rows(source_name)
        steps = stage_steps(stage, counts)
        if steps < 1:
            raise config_lib.ConfigKeyError(
                f"config.stages.{name}: its data ({', '.join(f'{s}: {counts[s]} rows' for s in stage.data)}) "
                f"fills no batch of batch_size {stage.batch_size}"
            )
        plans.append(StagePlan(index, name, stage, steps, total))
        total += steps
    return plans


def plan_summary(plans: list[StagePlan]) -> list[dict]:
    """The stage table as results.md shows it."""
    return [{"stage": p.name, "kind": p.spec.kind, "steps": p.steps, "trainable": list(p.spec.trainable)}
            for p in plans]  # fmt: skip


# -- ahead-of-time sizing (`staged-vlm plan --topology`) --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeviceKind:
    """A device's memory (bytes) and dense bf16 peak (FLOP/s); 0 where it does not apply (host CPU)."""

    memory_bytes: int
    peak_flops: float


DEVICE_KINDS: dict[str, DeviceKind] = {
    "cpu": DeviceKind(0, 0.0),  # the host's memory, shared by its devices
    "h100-80gb": DeviceKind(81_559 * 2**20, 989e12),  # nvidia-smi's total; SXM dense bf16
    "h200-141gb": DeviceKind(143_771 * 2**20, 989e12),
    "tpu-v5p": DeviceKind(95 * 2**30, 459e12),
    "tpu-v5e": DeviceKind(16 * 2**30, 197e12),
}


@dataclasses.dataclass(frozen=True)
class Topology:
    """``KIND:DEVICES`` (e.g. ``h100-80gb:8``): how many devices of which kind the programs are sized for."""

    name: str
    kind: DeviceKind
    devices: int

    @property
    def memory_bytes(self) -> int:
        if self.kind.memory_bytes:
            return self.kind.memory_bytes
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // self.devices


def topology(name: str) -> Topology:
    """Parses ``KIND:DEVICES``; an unknown kind or a bad count names the choices."""
    kind, _, count = name.partition(":")
    if kind not in DEVICE_KINDS or not count.isdigit() or int(count) < 1:
        raise config_lib.ConfigKeyError(
            f"--topology {name!r}: expected KIND:DEVICES with KIND one of {', '.join(DEVICE_KINDS)}, e.g. h100-80gb:8"
        )
    return Topology(name, DEVICE_KINDS[kind], int(count))


@dataclasses.dataclass(frozen=True)
class ProgramSize:
    """One compiled program's per-device bytes (XLA's buffer assignment) and model FLOPs per device (`Flops`)."""

    stage: str
    program: str  # "rollout" or "train"
    shape: str  # what one run of it processes
    arguments: int
    outputs: int
    temporaries: int
    aliased: int  # outputs that reuse (donated) argument buffers
    flops: float

    @property
    def total(self) -> int:
        return self.arguments + self.outputs + self.temporaries - self.aliased


def _size(stage: str, program: str, shape: str, lowered: jax.stages.Lowered, flops: float) -> ProgramSize:
    memory = lowered.compile().memory_analysis()
    return ProgramSize(stage, program, shape, memory.argument_size_in_bytes, memory.output_size_in_bytes,
                       memory.temp_size_in_bytes, memory.alias_size_in_bytes, flops)  # fmt: skip


class Flops:
    """Model FLOPs of the programs, counted from the architecture as MaxText does (XLA's cost analysis counts a
    loop body once, and layers, micro-batches and decode steps are all loops): 2 per multiply-add of every
    matmul weight and token, plus attention (4 · width per query-key pair, causal contexts halved, vision
    windows and frames as the tower attends them). Norms, softmax and the optimizer are left out."""

    def __init__(self, model: nnx.Module):
        cfg = model.cfg
        kernels = lambda module: sum(x.size for path, x in nnx.to_flat_state(nnx.state(module, nnx.Param))
                                     if path[-1] == "kernel")  # fmt: skip
        self.text, self.vision = cfg.text, cfg.vision
        self.decoder = kernels(model.language_model.layers)
        self.blocks = kernels(model.visual.blocks) + kernels(model.visual.patch_embed)
        self.merger = kernels(model.visual) - self.blocks  # the rest are mergers' (Qwen3-VL's DeepStack ones too)

    def decoder_tokens(self, tokens: float, context: float) -> float:
        """Tokens through every decoder layer, each attending ``context`` keys."""
        t = self.text
        return 2 * self.decoder * tokens + 4 * t.num_hidden_layers * t.hidden_size * tokens * context

    def head(self, tokens: float) -> float:
        return 2 * self.text.hidden_size * self.text.vocab_size * tokens

    def image(self, patches: float) -> float:
        """One row's ``patches`` through the vision tower (windowed blocks attend a window, full ones the image;
        a tower without windows, Qwen3-VL's, is all full blocks)."""
        v = self.vision
        window = min(patches, (getattr(v, "window_size", 0) // v.patch_size) ** 2)
        full = len(getattr(v, "fullatt_block_indexes", range(v.depth)))
        attention = 4 * v.hidden_size * patches * ((v.depth - full) * window + full * patches)
        return 2 * self.blocks * patches + attention + 2 * self.merger * patches / v.spatial_merge_size**2

    def forward(self, prompts: int, prompt: int, rows: int, length: int, patches: int) -> float:
        """``prompts`` prompts of ``prompt`` tokens (and ``patches`` image patches each), each continued by its
        share of ``rows`` responses of ``length`` tokens, through the model up to the response log-probs."""
        return (self.decoder_tokens(prompts * prompt, prompt / 2) + prompts * self.image(patches)
                + self.decoder_tokens(rows * length, prompt + length / 2) + self.head(rows * length))  # fmt: skip

    def train(self, learner: LearnerConfig, prompts: int, prompt: int, rows: int, length: int, patches: int) -> float:
        """The train step: the update's forward and backward (3 forwards; remat adds one), the reference
        log-probs when the KL term is on, and the old log-probs of the mini-batches after the first."""
        passes = 3 + (learner.remat != "none") + (learner.kl_coef > 0) + 1 - 1 / learner.num_minibatches
        return passes * self.forward(prompts, prompt, rows, length, patches)

    def rollout(self, prompts: int, prompt: int, rows: int, length: int, patches: int) -> float:
        """Prefill of the prompts (LM head on their last position) and ``length`` decode steps of ``rows`` rows."""
        prefill = self.decoder_tokens(prompts * prompt, prompt / 2) + prompts * self.image(patches)
        return (
            prefill
            + self.head(prompts)
            + self.decoder_tokens(rows * length, prompt + length / 2)
            + self.head(rows * length)
        )


def _largest_image_patches(spec: config_lib.RunSpec, model_cfg) -> int:
    """Patches of the largest image one prompt can hold: what the processor makes of ``max_pixels`` (InternVL's:
    its most tiles, whatever the pixels), or as many as ``max_prompt_length`` image tokens cover (a larger image
    makes the prompt over-long, and it is dropped)."""
    largest = spec.image_inputs().settings.largest_patches(spec.data.max_pixels)
    return min(largest, model_cfg.vision.spatial_merge_size**2 * spec.data.max_prompt_length)


def size_programs(spec: config_lib.RunSpec, model_cfg, mesh, cache_limit: int | None) -> list[ProgramSize]:
    """Lowers and compiles, for shapes only, every scheduled stage's programs at the config's largest shapes:
    the rollout engine's sampling program (GRPO stages; chunked as the engine would under ``cache_limit``) and the
    learner's train step. Stages with the same programs are compiled once."""
    rules = spec.rules()
    model = nnx.eval_shape(lambda: models.create(model_cfg, dtype=spec.model.dtype, seed=spec.seed))
    engine = RolloutEngine(spec.engine_config(), mesh, rules)
    flops, devices = Flops(model), mesh.devices.size
    vision = model_cfg.vision
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    prompt = bucket(spec.data.max_prompt_length, spec.data.prompt_buckets)
    patches = bucket(_largest_image_patches(spec, model_cfg), spec.engine.patch_buckets)
    sizes: list[ProgramSize] = []
    seen: dict[tuple, list[ProgramSize]] = {}
    for name in spec.schedule:
        stage = spec.stages[name]
        rollout, learner_config = spec.stage_rollout(name), spec.stage_learner(name)
        images = any(spec.data.sources[s].capability != "text_reasoning" for s in stage.data)
        key = (stage.kind, stage.batch_size, images, rollout, learner_config)
        if key in seen:
            sizes += [dataclasses.replace(size, stage=name) for size in seen[key]]
            continue
        found = []
        if stage.kind == "grpo":
            lowered, chunks = engine.lower(model, prompts=stage.batch_size, prompt_length=prompt,
                                           max_new_tokens=rollout.max_new_tokens, n=rollout.n, patches=patches,
                                           images=int(images), limit=cache_limit)  # fmt: skip
            per_call = -(-stage.batch_size // chunks)
            shape = (f"{per_call} prompts x n {rollout.n}, {chunks} program(s) per step, prompt {prompt} + "
                     f"{rollout.max_new_tokens} new tokens")  # fmt: skip
            work = chunks * flops.rollout(per_call, prompt, per_call * rollout.n, rollout.max_new_tokens,
                                          patches if images else 0)  # fmt: skip
            found.append(_size(name, "rollout", shape, lowered, work / devices))
        learner = Learner(model, STAGE_KINDS[stage.kind].learner_config(learner_config), mesh, rules)
        rows = stage.batch_size * STAGE_KINDS[stage.kind].rows_per_prompt(rollout)
        group = learner.group_size(rows, rollout.n) if stage.kind == "grpo" else 1
        length = rollout.max_new_tokens
        struct = lambda shape, dtype: jax.ShapeDtypeStruct(
            shape, dtype, sharding=batch_sharding(mesh, len(shape), rules)
        )
        batch = TrainBatch(
            input_ids=struct((rows, prompt + length), jnp.int32),
            attention_mask=struct((rows, prompt + length), jnp.int32),
            response_mask=struct((rows, length), jnp.int32),
            advantages=struct((rows,), jnp.float32),
            pixel_values=struct((rows // group, patches, patch_dim), model.pixel_dtype) if images else None,
            image_grid_thw=struct((rows // group, 1, 3), jnp.int32) if images else None,
            group_size=group,
        )
        cfg = learner.config
        spread = micro_batch_spread_warning(cfg, rows, group, batch_shards(mesh, rules))
        shape = (f"{rows} rows of {prompt} + {length} tokens, {cfg.num_minibatches} mini-batches of micro-batches "
                 f"of {cfg.micro_batch_rows(rows)}" + (f", prompts shared by {group}"
                 if group > 1 else "") + (f" (warning: {spread})" if spread else ""))  # fmt: skip
        work = flops.train(cfg, rows // group, prompt, rows, length, patches if images else 0)
        found.append(_size(name, "train", shape, learner.lower(batch), work / devices))
        seen[key] = found
        sizes += found
    return sizes


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def size_report(sizes: list[ProgramSize], target: Topology, headroom: float) -> list[str]:
    """One line per program and the verdict, ``plan: fits`` or ``plan: does not fit (...)``: every program's
    per-device bytes within ``headroom`` of the device's memory."""
    budget = target.memory_bytes * headroom
    lines = []
    for size in sizes:
        lines.append(
            f"{size.stage} {size.program}: {size.shape}; per device: arguments {_gib(size.arguments)}, temporaries "
            f"{_gib(size.temporaries)}, outputs {_gib(size.outputs)} (aliased {_gib(size.aliased)}) = "
            f"{_gib(size.total)} of {_gib(target.memory_bytes)}; {size.flops / 1e12:.3g} model TFLOP per device"
        )
    over = [size for size in sizes if size.total > budget]
    largest = max(sizes, key=lambda size: size.total)
    if over:
        worst = max(over, key=lambda size: size.total)
        lines.append(f"plan: does not fit ({len(over)} program(s) over {headroom:.0%} of device memory; largest: "
                     f"{worst.stage} {worst.program} {_gib(worst.total)} of {_gib(target.memory_bytes)})")  # fmt: skip
    else:
        lines.append(f"plan: fits (largest: {largest.stage} {largest.program} {_gib(largest.total)} of "
                     f"{_gib(target.memory_bytes)} per device)")  # fmt: skip
    return lines


def stage_lines(spec: config_lib.RunSpec, rows: Callable[[str], int]) -> list[str]:
    """``stage NAME: S steps (E epochs x K batches of B; R rows per epoch, ...)`` per scheduled stage, with each
    source's rows counted by ``rows``; a data file that is not there (planning away from the data) gives
    ``? steps`` naming it."""
    counts: dict[str, int] = {}
    lines = []
    for name in spec.schedule:
        stage = spec.stages[name]
        if stage.steps:
            lines.append(f"stage {name}: {stage.steps} steps (fixed, batch {stage.batch_size})")
            continue
        missing = []
        for source_name in stage.data:
            if source_name not in counts:
                try:
                    counts[source_name] = rows(source_name)
                except FileNotFoundError as error:
                    missing.append(f"{error.filename or error}: not found")
                except DataError as error:
                    missing.append(str(error))
        if missing:
            lines.append(f"stage {name}: ? steps ({'; '.join(missing)}), batch {stage.batch_size}")
            continue
        epoch = stage_rows(stage, counts)
        lines.append(f"stage {name}: {stage_steps(stage, counts)} steps ({stage.epochs} epochs x "
                     f"{epoch // stage.batch_size} batches of {stage.batch_size}; {epoch} rows per epoch, the last "
                     "partial batch dropped)")  # fmt: skip
    return lines


def use_host_devices(count: int) -> None:
    """Makes this process's JAX backend ``count`` host CPU devices, the stand-ins for a target's devices. Must run
    before JAX starts its backend (a process that already has exactly ``count`` CPU devices passes)."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        if jax.default_backend() != "cpu" or jax.device_count() != count:
            raise config_lib.ConfigKeyError(
                f"this process already runs JAX on {jax.device_count()} {jax.default_backend()} device(s); plan a "
                f"{count}-device topology in a fresh process"
            )
        return
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={count}"])
    jax.config.update("jax_platforms", "cpu")


def _plan_rows(spec: config_lib.RunSpec, workdir: epath.Path) -> Callable[[str], int]:
    """Rows as the run will count them (screened) when the run's tokenizer is at hand, else the files' rows."""
    try:
        tokenizer = workdir_lib.tokenizer(spec, workdir)
    except (TokenizerError, OSError) as error:
        print(f"plan: counting the files' rows, before the over-long filter ({error})", file=sys.stderr)
        return file_rows(spec)
    return screened_rows(spec, DataScreen(tokenizer, spec.image_inputs(), spec.data.max_prompt_length, "skip"))


def plan_lines(config, target: Topology | None, headroom: float = 0.9) -> list[str]:
    """What `staged-vlm plan` prints: the stage table and, for ``target``, every program's size and the verdict.
    With a target, `use_host_devices` must have been called first."""
    with tempfile.TemporaryDirectory(prefix="staged_vlm_plan_") as workdir:
        spec = config_lib.resolve(config, workdir)
        write_synthetic_data(spec, epath.Path(workdir))  # the testbed's data (none for real runs)
        lines = stage_lines(spec, _plan_rows(spec, epath.Path(workdir)))
    if target is None:
        return lines
    model_cfg = model_config(spec)
    mesh = make_mesh(spec.mesh, jax.devices()[: target.devices])
    lines.append(f"topology {target.name}: {target.devices} devices of {_gib(target.memory_bytes)}, mesh "
                 f"{dict(mesh.shape)}; sizes from XLA:CPU's compilation for that mesh")  # fmt: skip
    limit = spec.engine.max_cache_bytes or int(target.memory_bytes * spec.engine.cache_memory_fraction)
    print(f"plan: compiling {len(spec.schedule)} stages' programs for {target.name} ...", file=sys.stderr)
    return lines + size_report(size_programs(spec, model_cfg, mesh, limit), target, headroom)
