"""Run configs as data: the paper's recipe and the CPU testbed, which the thin files in ``configs/`` return.

Every function returns an ml-collections ConfigDict that `train.config.resolve` checks; the stage layouts
(staged in any order, merged, difficulty-sorted) come from `data.curriculum`. Paths are config fields, so a
real run is ``--config configs/qwen2_5_vl_7b_staged.py --config.model.path=/ckpt/Qwen2.5-VL-7B-Instruct
--config.data.sources.perception.path=/data/perception.jsonl ...``.
"""

from __future__ import annotations

import dataclasses
import types
import typing

from ml_collections import ConfigDict, config_dict

from staged_vlm_jax.data import curriculum
from staged_vlm_jax.rl.grpo import RolloutConfig
from staged_vlm_jax.rl.learner import LearnerConfig
from staged_vlm_jax.train.config import DEFAULT_SFT_TEMPLATE, RewardSpec, WatchSpec

STAGE_SECTIONS = {"learner": LearnerConfig, "rollout": RolloutConfig, "reward": RewardSpec}

CAPABILITY_STAGES = ("perception", "text_reasoning", "visual_reasoning")
# Trainable-parameter regexes: everything, or the language model and head with the vision tower (incl. its
# merger, as EasyR1's freeze_vision_tower) frozen.
ALL_PARAMETERS = (r".*",)
VISION_FROZEN = (r"^(?!visual\.)",)


def _field_type(hint) -> type:
    """The type a config field's value is checked against: X | None -> X, tuple[str, ...] -> tuple."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    origin = typing.get_origin(hint)
    return _field_type(args[0]) if origin in (typing.Union, types.UnionType) else origin or hint


def section(cls: type, values: dict) -> dict:
    """Every field of the config dataclass ``cls`` (but ``trainable``: each stage says what it trains), valued by
    ``values``; a field without a value is a typed placeholder (None). Every key is then present, so a command
    line can set any of them (``--config.stages.text_reasoning.learner.learning_rate=3e-7``), type-checked."""
    hints = typing.get_type_hints(cls)
    placeholder = lambda name: config_dict.placeholder(_field_type(hints[name]))
    return {f.name: placeholder(f.name) if values.get(f.name) is None else values[f.name]
            for f in dataclasses.fields(cls) if f.name != "trainable"}  # fmt: skip


def run_section(cls: type, **values) -> dict:
    """A run-level section: ``cls``'s defaults with ``values`` over them (`section`)."""
    return section(cls, {**dataclasses.asdict(cls()), **values})


def stage(data: dict[str, int], batch_size: int, epochs: int, trainable: tuple[str, ...], **fields) -> ConfigDict:
    """A stage with every optional key present, so command-line overrides of any of them type-check; ``learner``,
    ``rollout`` and ``reward`` (given as dicts) override the run's sections; their unset keys are placeholders
    (None: the run's value stands, see `section`)."""
    sections = {name: section(cls, fields.pop(name, None) or {}) for name, cls in STAGE_SECTIONS.items()}
    stage = dict(kind="grpo", data=data, batch_size=batch_size, epochs=epochs, steps=0, order="shuffle",
                 source_order=(), drop_solved=False, trainable=trainable, evaluate=True,
                 response_template=DEFAULT_SFT_TEMPLATE, **sections)  # fmt: skip
    return ConfigDict({**stage, **fields})


def paper(model_path: str, family: str = "qwen2_5_vl") -> ConfigDict:
    """The paper's staged recipe (EasyR1 GRPO, Table 1): perception → text reasoning → visual reasoning.

    512 prompts per step, n = 5, 4 mini-batch updates, k3 KL 1e-2 against each stage's initial weights, clip
    0.2/0.3 + dual clip 3, AdamW 1e-6, prompts ≤ 2048 and responses ≤ 2048 tokens, images 512²–2048², epochs
    16/15/15, vision tower trainable in stages 1 and 3, frozen in 2. Data paths are placeholders to override.
    """
    c = ConfigDict()
    c.seed = 0
    c.model = dict(family=family, path=model_path, dtype="bfloat16", tokenizer="", tiny={})
    c.mesh = dict(data=1, fsdp=-1, tensor=1)  # FSDP over every chip, as EasyR1's FSDP actor
    c.data = dict(
        sources={
            "perception": dict(path="/data/staged_vlm/perception.jsonl", capability="perception", image_root=""),
            "text_reasoning": dict(path="/data/staged_vlm/text_reasoning.jsonl", capability="text_reasoning",
                                   image_root=""),
            "visual_reasoning": dict(path="/data/staged_vlm/visual_reasoning.jsonl", capability="visual_reasoning",
                                     image_root=""),
        },
        synthetic=dict(train_rows=0, eval_rows=0, image_size=112, seed=0, max_difficulty=1.0),
        max_prompt_length=2048, prompt_buckets=(512, 1024, 2048), min_pixels=512 * 512, max_pixels=2048 * 2048,
        image_resize="easyr1", image_backend="pil", worker_threads=8, on_error="raise", verify_images=False,
    )  # fmt: skip
    c.engine = dict(new_token_buckets=(512, 1024, 2048))
    c.rollout = run_section(RolloutConfig, n=5, max_new_tokens=2048, temperature=1.0, top_p=1.0, top_k=0,
                            advantage="grpo")  # fmt: skip
    # optimizer_precision "kahan": with bf16 weights a 1e-6 AdamW step would otherwise round away (EasyR1's adamw_bf16).
    c.learner = run_section(LearnerConfig, learning_rate=1e-6, weight_decay=1e-2, max_grad_norm=1.0,
                            num_minibatches=4, micro_batch_size=40, loss_type="grpo", loss_agg="token-mean",
                            clip_low=0.2, clip_high=0.3, clip_dual=3.0, kl_coef=1e-2, kl_kind="k3", warmup_steps=0,
                            optimizer_precision="kahan", remat="full", logits_chunk=128)  # fmt: skip
    c.reward = run_section(RewardSpec, name="math", num_workers=16, timeout_s=5.0)
    c.stages = dict(
        perception=stage({"perception": 1}, 512, 16, ALL_PARAMETERS),
        text_reasoning=stage({"text_reasoning": 1}, 512, 15, VISION_FROZEN),
        visual_reasoning=stage({"visual_reasoning": 1}, 512, 15, ALL_PARAMETERS),
    )
    c.schedule = CAPABILITY_STAGES
    # Validation as the paper's runs: add held-out sets in a config file (c.eval.sources.geometry3k = dict(path=...,
    # capability="visual_reasoning", image_root="")); they are scored at stage ends and every eval.every_steps
    # steps, one sample per prompt at temperature 0.6, top-p 0.95 (the benchmarks are `staged-vlm eval`'s).
    c.eval = dict(sources={}, batch_size=256, max_new_tokens=2048, before_training=False, every_steps=0,
                  temperature=0.6, top_p=0.95, benchmarks={}, benchmark_limit=0)  # fmt: skip
    c.checkpoint = dict(every_steps=25, keep=2, async_save=True)
    c.watch = run_section(WatchSpec)
    c.compilation_cache = "{workdir}/jax_cache"
    return c


# The paper's merged baseline and one-run curricula: 15 epochs over the union of the three sets.
MERGED_EPOCHS = 15


def merged(
    config: ConfigDict, names: tuple[str, ...] = CAPABILITY_STAGES, epochs: int = MERGED_EPOCHS, **overrides
) -> ConfigDict:
    """``config`` with ``names`` replaced by the paper's merged baseline: one stage of ``epochs`` epochs over their
    union, reshuffled every epoch, vision tower frozen (unless ``overrides`` say otherwise; ``order`` gives the
    difficulty curricula)."""
    config.stages.merged = curriculum.merged(config.stages, names, epochs, **{"trainable": VISION_FROZEN, **overrides})
    prefix = tuple(name for name in config.schedule if name not in names)
    config.schedule = (*prefix, "merged")
    return config


# InternVL3-8B's Stage 2 in the official scripts (training/examples/internvl3_8b/stage2_text_reasoning.sh): damped
# "to avoid entropy explosion". EasyR1 warms the learning rate up over lr_warmup_ratio 0.05 of the stage's RL steps
# (int(0.05 · 375) = 18 on the paper's data); the learner counts optimizer updates, 4 per step.
INTERNVL3_DAMPED_TEXT_STAGE = dict(learning_rate=3e-7, warmup_steps=18 * 4, kl_coef=5e-2, clip_low=0.15,
                                   clip_high=0.15, max_grad_norm=0.5)  # fmt: skip


def internvl(model_path: str, damped_text_stage: bool = False) -> ConfigDict:
    """The paper's staged recipe on an InternVL3 / InternVL3.5 checkpoint, with the official scripts' differences:
    prompts up to 4096 tokens (an InternVL image is up to 13 tiles of 256 tokens; the scripts raise the limit for
    the image stages, and the text stage's prompts never come near it), and, for InternVL3-8B
    (``damped_text_stage``), the damped text-reasoning stage (`INTERNVL3_DAMPED_TEXT_STAGE`)."""
    c = paper(model_path=model_path, family="internvl")
    c.data.max_prompt_length = 4096
    c.data.prompt_buckets = (512, 1024, 2048, 4096)
    if damped_text_stage:
        c.stages.text_reasoning.learner.update(INTERNVL3_DAMPED_TEXT_STAGE)
    return c


def internvl_merged(model_path: str) -> ConfigDict:
    """The merged baseline on an InternVL checkpoint as the official scripts run it (internvl3*_8b/merged_baseline.sh):
    unlike the Qwen runs the vision tower trains, images are pre-resized into at most 500,000 pixels, and prompts
    stay within 2048 tokens."""
    c = merged(paper(model_path=model_path, family="internvl"), trainable=ALL_PARAMETERS)
    c.data.max_pixels = 500_000
    return c


def demo() -> ConfigDict:
    """The CPU testbed: a ~1 M-parameter Qwen2.5-VL, synthetic data, an SFT warm start, then GRPO 1 → 2 → 3.

    Same code path as the paper's recipe; the hyper-parameters are a tiny model's (larger learning rate and
    group size, short responses), sized so that `benchmarks/testbed.py --seeds 5` (staged, merged and 3 → 2 → 1,
    15 runs) fits in 30 minutes on 2 CPU cores: 256 training rows per capability, a warm start of 2 epochs
    (48 SFT steps), one GRPO epoch per stage (32 steps of 8 prompts × 8 answers). Held-out sets of 128 rows per
    capability, so one run's accuracy is within about ±8 points (95 %) of its expectation; seeds do the rest.
    Every arm of the testbed shares these settings; its configs change only the stage layout (the merged baseline
    freezes the vision tower, as the paper's does).
    """
    c = paper(model_path="", family="qwen2_5_vl")
    c.model = dict(
        family="qwen2_5_vl", path="", dtype="float32", tokenizer="tiny",
        tiny=dict(vocab_size=512, text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                                            num_attention_heads=4, num_key_value_heads=2, mrope_section=(4, 6, 6)),
                  vision=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128)),
    )  # fmt: skip
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    for capability in CAPABILITY_STAGES:
        c.data.sources[capability] = dict(path=f"{{workdir}}/data/train/{capability}.jsonl", capability=capability,
                                          image_root="")  # fmt: skip
    # The easy end of each generator (small numbers, few objects; the `synthetic` module lists what 0.3 keeps):
    # what a 1 M-parameter model can learn in minutes.
    c.data.synthetic = dict(train_rows=256, eval_rows=128, image_size=56, seed=0, max_difficulty=0.3)
    c.data.max_prompt_length = 320
    c.data.prompt_buckets = (192, 256, 320)
    c.data.min_pixels, c.data.max_pixels = 56 * 56, 56 * 56
    c.data.worker_threads = 0
    c.engine = dict(new_token_buckets=(16,), batch_buckets=(8, 16, 32, 64))
    c.rollout.update(n=8, max_new_tokens=16)
    c.learner.update(learning_rate=3e-4, num_minibatches=2, kl_coef=1e-2, remat="none")
    c.learner.micro_batch_size = config_dict.placeholder(int)  # None (whole mini-batches), still overridable
    c.reward.num_workers = 1
    c.stages = dict(
        warm_start=stage({capability: 1 for capability in CAPABILITY_STAGES}, 32, 2, ALL_PARAMETERS,
                          kind="sft", response_template="<think> </think> \\boxed{{{answer}}}"),
        perception=stage({"perception": 1}, 8, 1, ALL_PARAMETERS),
        text_reasoning=stage({"text_reasoning": 1}, 8, 1, VISION_FROZEN),
        visual_reasoning=stage({"visual_reasoning": 1}, 8, 1, ALL_PARAMETERS),
    )  # fmt: skip
    c.stages.warm_start.learner.learning_rate = 2e-3
    c.schedule = ("warm_start", *CAPABILITY_STAGES)
    c.eval = dict(
        sources={f"heldout_{capability}": dict(path=f"{{workdir}}/data/eval/{capability}.jsonl",
                                               capability=capability, image_root="")
                 for capability in CAPABILITY_STAGES},
        batch_size=64, max_new_tokens=16, before_training=False, every_steps=0, temperature=0.0, top_p=1.0,
        benchmarks={}, benchmark_limit=0,
    )  # fmt: skip
    c.checkpoint = dict(every_steps=10, keep=2, async_save=True)
    return c


def demo_reverse() -> ConfigDict:
    """The testbed's order ablation: the demo's warm start, then the stages in reverse, 3 → 2 → 1."""
    c = demo()
    c.schedule = ("warm_start", *reversed(CAPABILITY_STAGES))
    return c
