"""Run configs: every shipped config builds and resolves, typos are named, staged and merged layouts of the same
data plan the same number of optimizer steps, and resumes compare configs key by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from staged_vlm_jax.cli import load_config
from staged_vlm_jax.data.synthetic import write_synthetic
from staged_vlm_jax.models.sharding import DEFAULT_RULES
from staged_vlm_jax.rl.learner import batch_split_error
from staged_vlm_jax.train import config as config_lib
from staged_vlm_jax.train import recipes
from staged_vlm_jax.train.kinds import STAGE_KINDS
from staged_vlm_jax.train.plan import plan_stages

CONFIGS = sorted((Path(__file__).parents[2] / "configs").rglob("*.py"))


def test_configs_are_found() -> None:
    names = {path.stem for path in CONFIGS}
    assert {"demo", "demo_merged", "qwen2_5_vl_7b_staged", "qwen2_5_vl_7b_merged", "reverse_321",
            "perception_then_visual", "text_then_visual", "caption_sft", "difficulty",
            "capability_x_difficulty"} <= names  # fmt: skip


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_every_config_builds_and_resolves(path: Path, tmp_path: Path) -> None:
    spec = config_lib.resolve(load_config(str(path), []), tmp_path)
    assert spec.schedule and all(name in spec.stages for name in spec.schedule)
    for name in spec.schedule:
        learner = spec.stage_learner(name)
        # The paper's rule: the vision tower trains in perception / visual-reasoning stages only when staged.
        if name == "text_reasoning" or name == "merged":
            assert learner.trainable == recipes.VISION_FROZEN


def test_paper_recipe_values() -> None:
    spec = config_lib.resolve(load_config("configs/qwen2_5_vl_7b_staged.py", []), "/w")
    assert spec.schedule == ("perception", "text_reasoning", "visual_reasoning")
    assert [spec.stages[name].epochs for name in spec.schedule] == [16, 15, 15]
    assert {spec.stages[name].batch_size for name in spec.schedule} == {512}
    assert spec.rollout.n == 5 and spec.rollout.max_new_tokens == 2048 and spec.data.max_prompt_length == 2048
    learner = spec.learner
    assert (learner.learning_rate, learner.kl_coef, learner.kl_kind, learner.num_minibatches) == (1e-6, 1e-2, "k3", 4)
    assert (learner.clip_low, learner.clip_high, learner.clip_dual, learner.loss_agg) == (0.2, 0.3, 3.0, "token-mean")
    assert (spec.data.min_pixels, spec.data.max_pixels) == (512 * 512, 2048 * 2048)
    assert spec.stage_learner("perception").trainable == recipes.ALL_PARAMETERS
    assert spec.model.dtype == "bfloat16" and learner.optimizer_precision == "kahan"  # updates do not round away
    # 2560 rows -> 4 mini-batches of 640 -> micro-batches of whole groups of n = 5 (the learner shares prompts).
    assert batch_split_error(learner, 512 * spec.rollout.n, spec.rollout.n) is None


def test_unknown_keys_are_named_with_a_suggestion(tmp_path: Path) -> None:
    config = recipes.demo()
    config.stages.perception.epoch = 3
    with pytest.raises(config_lib.ConfigKeyError, match=r"^config\.stages\.perception\.epoch: unknown config key; "
                       r"did you mean config\.stages\.perception\.epochs\?$"):  # fmt: skip
        config_lib.resolve(config, tmp_path)
    config = recipes.demo()
    config.stages.perception.learner = {"learning_rat": 1e-3}
    with pytest.raises(config_lib.ConfigKeyError, match=r"stages\.perception\.learner\.learning_rat: .*learning_rate"):
        config_lib.resolve(config, tmp_path)
    config = recipes.demo()
    config.schedule = ("warm_start", "perceptoin")
    with pytest.raises(config_lib.ConfigKeyError, match=r"config\.stages\.perceptoin: .*perception"):
        config_lib.resolve(config, tmp_path)
    config = recipes.demo()
    config.stages.perception.data = {"perception_v2": 1}
    with pytest.raises(config_lib.ConfigKeyError, match=r"stages\.perception\.data \(config\.data\.sources\)"):
        config_lib.resolve(config, tmp_path)


def test_a_batch_that_does_not_split_is_refused_before_training(tmp_path: Path) -> None:
    config = recipes.demo()
    config.stages.perception.learner = {"micro_batch_size": 12}  # the demo's mini-batch: 8 prompts × 8 / 2 = 32 rows
    with pytest.raises(config_lib.ConfigKeyError, match=r"^config\.stages\.perception: 64 rows do not split into "
                       r"learner\.num_minibatches=2 .* learner\.micro_batch_size=12 \(batch_size 8 prompts × "
                       r"rollout\.n=8\)$"):  # fmt: skip
        config_lib.resolve(config, tmp_path)


def test_override_typos_are_named() -> None:
    with pytest.raises(config_lib.ConfigKeyError, match=r"--config\.rollout\.nn=8: unknown config key 'nn'"):
        load_config("configs/demo.py", ["--config.rollout.nn=8"])
    with pytest.raises(config_lib.ConfigKeyError, match="unknown arguments"):
        load_config("configs/demo.py", ["--rollout.n=8"])
    assert load_config("configs/demo.py", ["--config.rollout.n=3"]).rollout.n == 3


def test_config_differences_name_dotted_keys() -> None:
    saved = recipes.demo().to_dict()
    current = recipes.demo()
    current.rollout.n = 3
    current.stages.perception.learner = {"learning_rate": 0.5}
    differences = config_lib.config_differences(saved, current.to_dict())
    assert differences == ["rollout.n", "stages.perception.learner.learning_rate"]
    assert config_lib.config_differences(saved, recipes.demo().to_dict()) == []


def _with_synthetic_data(config, workdir: Path, rows: dict[str, int]):
    for capability, count in rows.items():
        path = write_synthetic(workdir / "data", capability, count, seed=0)
        config.data.sources[capability].path = str(path)
    return config


@pytest.mark.parametrize("epochs", [(2, 3, 1), (1, 1, 1)])
def test_staged_and_merged_plan_the_same_number_of_steps(tmp_path: Path, epochs) -> None:
    rows = {"perception": 37, "text_reasoning": 29, "visual_reasoning": 21}
    staged = _with_synthetic_data(recipes.paper("/m"), tmp_path, rows)
    staged.learner.micro_batch_size = 10  # 8 prompts × n = 5 in 4 mini-batches
    for name, count in zip(recipes.CAPABILITY_STAGES, epochs, strict=True):
        staged.stages[name].epochs = count
        staged.stages[name].batch_size = 8
    merged = recipes.merged(staged.copy_and_resolve_references())
    staged_plan = plan_stages(config_lib.resolve(staged, tmp_path))
    merged_plan = plan_stages(config_lib.resolve(merged, tmp_path))
    assert [plan.steps for plan in staged_plan] == [
        epoch * count // 8 for epoch, count in zip(epochs, rows.values(), strict=True)
    ]
    assert [plan.name for plan in merged_plan] == ["merged"]
    assert sum(plan.steps for plan in merged_plan) == sum(plan.steps for plan in staged_plan)
    assert merged.stages.merged.data.to_dict() == dict(zip(rows, epochs, strict=True))
    assert merged.stages.merged.trainable == recipes.VISION_FROZEN


def test_merged_rejects_what_would_break_step_parity() -> None:
    config = recipes.paper("/m")
    config.stages.text_reasoning.batch_size = 256
    with pytest.raises(ValueError, match="batch_size"):
        recipes.merged(config)
    config = recipes.paper("/m")
    config.stages.perception.steps = 10
    with pytest.raises(ValueError, match="steps"):
        recipes.merged(config)


def test_stage_kinds_decide_objective_and_batch_split(tmp_path: Path) -> None:
    spec = config_lib.resolve(recipes.demo(), tmp_path)
    assert spec.stage_learner("warm_start").objective == "nll"  # the sft kind's learner
    assert spec.stage_learner("perception").objective == "policy_gradient"
    assert STAGE_KINDS["grpo"].rows_per_prompt(spec.rollout) == spec.rollout.n == 8
    assert STAGE_KINDS["sft"].rows_per_prompt(spec.rollout) == 1
    config = recipes.demo()
    config.stages.perception.kind = "dpo"
    with pytest.raises(config_lib.ConfigKeyError, match=r"^config\.stages\.perception\.kind: 'dpo' is not one of "
                       r"\['grpo', 'sft'\]$"):  # fmt: skip
        config_lib.resolve(config, tmp_path)


def test_one_prompt_bucket_list_and_sharding_rules_from_the_config(tmp_path: Path) -> None:
    config = recipes.demo()
    config.sharding_rules = {"batch": ["data"], "vocab": None}
    spec = config_lib.resolve(config, tmp_path)
    assert spec.engine_config().prompt_buckets == spec.data.prompt_buckets == (192, 256, 320)
    assert spec.rules() == {**DEFAULT_RULES, "batch": ("data",), "vocab": None}
    config.engine.prompt_buckets = (64, 128)
    with pytest.raises(
        config_lib.ConfigKeyError, match=r"^config\.engine\.prompt_buckets: .*config\.data\.prompt_buckets"
    ):
        config_lib.resolve(config, tmp_path)
    config = recipes.demo()
    config.sharding_rules = {"batchh": None}
    with pytest.raises(config_lib.ConfigKeyError, match=r"config\.sharding_rules\.batchh: .*did you mean .*batch\?"):
        config_lib.resolve(config, tmp_path)
