"""Run configs: every shipped config builds and resolves, typos are named, staged and merged layouts plan the
paper's step counts (EasyR1's per-epoch drop_last), and resumes compare configs key by key."""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from pathlib import Path

import pytest

from staged_vlm_jax.cli import load_config
from staged_vlm_jax.data import images
from staged_vlm_jax.data.synthetic import write_synthetic
from staged_vlm_jax.models.sharding import DEFAULT_RULES
from staged_vlm_jax.rl.learner import batch_split_error
from staged_vlm_jax.train import config as config_lib
from staged_vlm_jax.train import recipes
from staged_vlm_jax.train.kinds import STAGE_KINDS
from staged_vlm_jax.train.plan import file_rows, plan_stages, stage_steps

REPO = Path(__file__).parents[2]
CONFIGS_DIR = REPO / "configs"
EVAL_CONFIGS = sorted((CONFIGS_DIR / "eval").glob("*.py"))  # `staged-vlm eval` configs (tests/eval)
CONFIGS = sorted(set(CONFIGS_DIR.rglob("*.py")) - set(EVAL_CONFIGS))


def test_configs_are_found() -> None:
    names = {path.stem for path in CONFIGS}
    assert {"demo", "demo_merged", "qwen2_5_vl_7b_staged", "qwen2_5_vl_7b_merged", "qwen3_vl_8b_staged",
            "qwen3_vl_8b_merged", "internvl3_8b_staged", "internvl3_8b_merged", "internvl3_5_8b_staged",
            "internvl3_5_8b_merged", "reverse_321",
            "perception_then_visual", "text_then_visual", "caption_sft", "difficulty",
            "capability_x_difficulty", "capability_x_difficulty_staged", "capability", "order_213", "visual_only",
            "merged_vision_trainable", "merged_reasoning_only"} <= names  # fmt: skip


MERGED_VISION_TRAINED = {"merged_vision_trainable", "internvl3_8b_merged", "internvl3_5_8b_merged"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_every_config_builds_and_resolves(path: Path, tmp_path: Path) -> None:
    spec = config_lib.resolve(load_config(str(path), []), tmp_path)
    assert spec.schedule and all(name in spec.stages for name in spec.schedule)
    for name in spec.schedule:
        learner = spec.stage_learner(name)
        # The paper's rule: the vision tower trains in perception / visual-reasoning stages only when staged (but in
        # the official InternVL merged scripts, and the ablation that trains it).
        if name == "text_reasoning" or (name == "merged" and path.stem not in MERGED_VISION_TRAINED):
            assert learner.trainable == recipes.VISION_FROZEN


def _untyped_nones(node, where: str = "config") -> list[str]:
    """Keys holding a bare None: the command line cannot set them (ml-collections needs a type)."""
    found = []
    for key, value in node.items():
        if hasattr(value, "items"):
            found += _untyped_nones(value, f"{where}.{key}")
        elif value is None and node.get_type(key) is type(None):
            found.append(f"{where}.{key}")
    return found


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_every_key_of_every_config_can_be_set_from_the_command_line(path: Path) -> None:
    assert _untyped_nones(load_config(str(path), [])) == []


def _sections(cls: type, found: dict) -> dict:
    """Every config dataclass reachable from ``cls`` through its fields' types (dict values included)."""
    found[cls.__name__] = cls
    for hint in typing.get_type_hints(cls).values():
        for candidate in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(candidate) and candidate.__name__ not in found:
                _sections(candidate, found)
    return found


def test_every_config_field_is_read_somewhere() -> None:
    """A field that no code reads is a key that silently does nothing. Each field of every section of the run
    config must be read somewhere in the package, as ``.name`` or a quoted ``"name"`` (a declaration alone,
    ``name: int = 0``, does not count). A static check: it cannot prove the read matters, only that one exists."""
    sources = [path.read_text() for path in (REPO / "staged_vlm_jax").rglob("*.py")]
    unread = []
    for cls in _sections(config_lib.RunSpec, {}).values():
        for field in dataclasses.fields(cls):
            pattern = re.compile(rf"\.{field.name}\b|[\"']{field.name}[\"']")
            if not any(pattern.search(text) for text in sources):
                unread.append(f"{cls.__name__}.{field.name}")
    assert unread == []


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
    with pytest.raises(config_lib.ConfigKeyError, match=r"^config\.rollout\.nn: unknown config key; did you mean "
                       r"config\.rollout\.n\?$"):  # fmt: skip
        load_config("configs/demo.py", ["--config.rollout.nn=8"])
    with pytest.raises(
        config_lib.ConfigKeyError,
        match=r"^config\.stages\.perception\.learner\.learnig_rate: "
        r"unknown config key; did you mean config\.stages\.perception\.learner\.learning_rate\?$",
    ):
        load_config("configs/demo.py", ["--config.rollout.n=3", "--config.stages.perception.learner.learnig_rate=1"])
    with pytest.raises(config_lib.ConfigKeyError, match=r"^--config\.seed\.x=1: config\.seed is a value, not a "):
        load_config("configs/demo.py", ["--config.seed.x=1"])
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


PAPER_ROWS = {"perception": 3300, "text_reasoning": 12900, "visual_reasoning": 15900}


def test_the_paper_recipe_plans_the_papers_step_counts(tmp_path: Path) -> None:
    """EasyR1 drops each epoch's last partial batch: epochs · ⌊rows / 512⌋ — 96 / 375 / 465 staged, and the merged
    baseline's 15 epochs over the union 930 (not 936: the paper's merged run is not step-matched)."""
    staged = config_lib.resolve(recipes.paper("/m"), tmp_path)
    assert [stage_steps(staged.stages[name], PAPER_ROWS) for name in staged.schedule] == [96, 375, 465]
    merged = config_lib.resolve(recipes.merged(recipes.paper("/m")), tmp_path)
    assert merged.schedule == ("merged",)
    assert stage_steps(merged.stages["merged"], PAPER_ROWS) == 930
    difficulty = config_lib.resolve(load_config(str(CONFIGS_DIR / "ablations" / "difficulty.py"), []), tmp_path)
    assert stage_steps(difficulty.stages["merged"], PAPER_ROWS) == 930


F, T = "frozen", "trained"  # the vision tower
ABLATIONS = {  # config -> [(stage, steps on the paper's data, order, vision tower)]
    "qwen2_5_vl_7b_staged": [("perception", 96, "shuffle", T), ("text_reasoning", 375, "shuffle", F),
                             ("visual_reasoning", 465, "shuffle", T)],
    "qwen2_5_vl_7b_merged": [("merged", 930, "shuffle", F)],
    "qwen3_vl_8b_staged": [("perception", 96, "shuffle", T), ("text_reasoning", 375, "shuffle", F),
                           ("visual_reasoning", 465, "shuffle", T)],
    "qwen3_vl_8b_merged": [("merged", 930, "shuffle", F)],
    "internvl3_8b_staged": [("perception", 96, "shuffle", T), ("text_reasoning", 375, "shuffle", F),
                            ("visual_reasoning", 465, "shuffle", T)],
    "internvl3_8b_merged": [("merged", 930, "shuffle", T)],
    "internvl3_5_8b_staged": [("perception", 96, "shuffle", T), ("text_reasoning", 375, "shuffle", F),
                              ("visual_reasoning", 465, "shuffle", T)],
    "internvl3_5_8b_merged": [("merged", 930, "shuffle", T)],
    "ablations/order_213": [("text_reasoning", 375, "shuffle", F), ("perception", 96, "shuffle", T),
                            ("visual_reasoning", 465, "shuffle", T)],
    "ablations/visual_only": [("visual_reasoning", 465, "shuffle", T)],
    "ablations/merged_vision_trainable": [("merged", 930, "shuffle", T)],
    "ablations/merged_reasoning_only": [("merged", 15 * ((12900 + 15900) // 512), "shuffle", F)],
    "ablations/capability": [("merged", 930, "sequential", F)],
    "ablations/difficulty": [("merged", 930, "difficulty", F)],
    "ablations/capability_x_difficulty": [("merged", 930, "difficulty_per_source", F)],
    "ablations/capability_x_difficulty_staged": [("perception", 96, "difficulty", F),
                                                 ("text_reasoning", 375, "difficulty", F),
                                                 ("visual_reasoning", 465, "difficulty", F)],
}  # fmt: skip


@pytest.mark.parametrize("name", ABLATIONS)
def test_every_experiment_of_the_paper_is_a_config(tmp_path: Path, name: str) -> None:
    spec = config_lib.resolve(load_config(str(CONFIGS_DIR / f"{name}.py"), []), tmp_path)
    vision = lambda stage: T if spec.stage_learner(stage).trainable == recipes.ALL_PARAMETERS else F
    got = [(stage, stage_steps(spec.stages[stage], PAPER_ROWS), spec.stages[stage].order, vision(stage))
           for stage in spec.schedule]  # fmt: skip
    assert got == ABLATIONS[name]
    merged = spec.stages.get("merged")
    if merged is not None:
        assert merged.sources() == tuple(source for source in PAPER_ROWS if source in merged.data)  # stage order


def test_the_internvl_configs_carry_the_official_scripts_differences(tmp_path: Path) -> None:
    """InternVL runs take prompts up to 4096 tokens; InternVL3-8B's text stage alone is damped (lr 3e-7 warmed up
    over 5 % of the paper's 375 steps, KL 5e-2, clip 0.15 / 0.15, gradient norm 0.5); the merged baselines pre-resize
    images into 500,000 pixels and keep 2048-token prompts. Everything else is the shared recipe's."""
    load = lambda name: config_lib.resolve(load_config(str(CONFIGS_DIR / f"{name}.py"), []), tmp_path)
    shared, internvl3, internvl3_5 = (load(name) for name in ("qwen3_vl_8b_staged", "internvl3_8b_staged",
                                                              "internvl3_5_8b_staged"))  # fmt: skip
    for spec in (internvl3, internvl3_5):
        assert spec.model.family == "internvl"
        assert spec.data.max_prompt_length == spec.data.prompt_buckets[-1] == 4096
        assert spec.image_inputs().settings is images.INTERNVL
        for name in ("perception", "visual_reasoning"):
            assert spec.stage_learner(name) == shared.stage_learner(name)
    damped = internvl3.stage_learner("text_reasoning")
    assert (damped.learning_rate, damped.warmup_steps, damped.kl_coef, damped.clip_low, damped.clip_high,
            damped.max_grad_norm) == (3e-7, 4 * int(0.05 * 375), 5e-2, 0.15, 0.15, 0.5)  # fmt: skip
    reference = shared.stage_learner("text_reasoning")
    undamped = {key: getattr(reference, key) for key in recipes.INTERNVL3_DAMPED_TEXT_STAGE}
    assert dataclasses.replace(damped, **undamped) == reference
    assert internvl3_5.stage_learner("text_reasoning") == reference
    for name in ("internvl3_8b_merged", "internvl3_5_8b_merged"):
        merged = load(name)
        assert (merged.data.max_pixels, merged.data.max_prompt_length) == (500_000, 2048)


def test_merged_is_epochs_over_the_union_in_stage_order(tmp_path: Path) -> None:
    rows = {"perception": 37, "text_reasoning": 29, "visual_reasoning": 21}
    staged = _with_synthetic_data(recipes.paper("/m"), tmp_path, rows)
    staged.learner.micro_batch_size = 10  # 8 prompts × n = 5 in 4 mini-batches
    for name in recipes.CAPABILITY_STAGES:
        staged.stages[name].batch_size = 8
    staged.stages.visual_reasoning.data = {"visual_reasoning": 2}  # a source repeated twice per epoch
    merged = recipes.merged(staged.copy_and_resolve_references(), ("visual_reasoning", "perception"), epochs=3)
    stage = merged.stages.merged
    assert stage.data.to_dict() == {"visual_reasoning": 2, "perception": 1}
    assert stage.source_order == ("visual_reasoning", "perception")  # the stages' order, whatever the names sort to
    assert (stage.epochs, stage.order, stage.trainable) == (3, "shuffle", recipes.VISION_FROZEN)
    assert merged.schedule == ("text_reasoning", "merged")
    spec = config_lib.resolve(merged, tmp_path)
    plans = plan_stages(spec, file_rows(spec))
    assert [(plan.name, plan.steps) for plan in plans] == [("text_reasoning", 15 * (29 // 8)),
                                                           ("merged", 3 * ((2 * 21 + 37) // 8))]  # fmt: skip


def test_stage_order_settings_are_checked_at_start_up(tmp_path: Path) -> None:
    config = recipes.paper("/m")
    config.stages.perception.order = "hardest_first"
    with pytest.raises(config_lib.ConfigKeyError, match=r"^config\.stages\.perception\.order: 'hardest_first' is "
                       r"not one of \['difficulty', 'difficulty_per_source', 'sequential', 'shuffle'\]$"):  # fmt: skip
        config_lib.resolve(config, tmp_path)
    config = recipes.paper("/m")
    config.stages.perception.source_order = ("text_reasoning",)
    with pytest.raises(config_lib.ConfigKeyError, match=r"^config\.stages\.perception\.source_order: "):
        config_lib.resolve(config, tmp_path)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("image_resize", "bilinear", r"image_resize: 'bilinear' is not one of \['easyr1', 'processor'\]$"),
    ("image_backend", "cv2", r"image_backend: 'cv2' is not one of \['auto', 'pil', 'torchvision'\]$"),
    ("on_error", "ignore", r"on_error: 'ignore' is not one of \['raise', 'skip'\]$"),
    ("min_pixels", 0, r"min_pixels \(0\) and max_pixels \(4194304\) must be positive with min_pixels <= max_pixels$"),
])  # fmt: skip
def test_data_settings_are_checked_at_start_up(tmp_path: Path, key: str, value, message: str) -> None:
    config = recipes.paper("/m")
    config.data[key] = value
    with pytest.raises(config_lib.ConfigKeyError, match=r"^config\.data\." + message):
        config_lib.resolve(config, tmp_path)


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("rollout", "n", 1, r"rollout\.n: 1; GRPO compares a prompt's n responses, so n must be >= 2$"),
    ("rollout", "advantage", "ppo", r"rollout\.advantage: 'ppo' is not one of \['dr_grpo', 'grpo', 'rloo'\]$"),
    ("reward", "name", "exact", r"reward\.name: unknown reward 'exact'; registered rewards: math, math_verify, mcq.*, "
     r"or a function of your own as FILE\.py:FUNCTION$"),
    ("learner", "learning_rate", -1e-6, r"learner\.learning_rate: -1e-06; must be positive and finite$"),
])  # fmt: skip
def test_stage_settings_are_checked_at_start_up(tmp_path: Path, section: str, key: str, value, message: str) -> None:
    """Checked for every scheduled stage before anything trains, naming the stage whose value it is."""
    config = recipes.paper("/m")
    config.stages.visual_reasoning[section][key] = value  # the last stage: found before the first one trains
    with pytest.raises(config_lib.ConfigKeyError, match=r"^config\.stages\.visual_reasoning: " + message):
        config_lib.resolve(config, tmp_path)


def test_the_image_path_follows_the_data_settings(tmp_path: Path) -> None:
    """The paper's images go through EasyR1's pre-resize into [512², 2048²], then the checkpoint's processor (hub
    limits); "processor" puts the limits on the processor instead; the backend is the one configured."""
    config = recipes.paper("/m")
    paper = (512 * 512, 2048 * 2048)
    assert config_lib.resolve(config, tmp_path).image_inputs() == images.ImageInputs(images.QWEN2_VL, "pil", paper)
    config.data.update(image_resize="processor", image_backend="torchvision")
    direct = images.ImageInputs(dataclasses.replace(images.QWEN2_VL, min_pixels=paper[0], max_pixels=paper[1]),
                                "torchvision")  # fmt: skip
    assert config_lib.resolve(config, tmp_path).image_inputs() == direct


OVERRIDE = re.compile(r"--config\.[\w.]+=[^\s`'\"]+")
README_OVERRIDES = sorted({match for doc in ("README.md", "launch/README.md")
                           for match in OVERRIDE.findall((REPO / doc).read_text())})  # fmt: skip


def test_the_docs_override_lines_load_and_take_effect(tmp_path: Path) -> None:
    """Every ``--config.x=y`` the README and launch/README show, on the paper's config (or, for a key only
    `staged-vlm eval` has, the main evaluation suite's): accepted, and its value is the resolved one (a stage's
    learner override reaches that stage's learner only)."""
    from staged_vlm_jax.eval.suite import SuiteSpec

    fields = lambda cls: {field.name for field in dataclasses.fields(cls)}
    eval_only = fields(SuiteSpec) - fields(config_lib.RunSpec)
    assert "--config.stages.text_reasoning.learner.learning_rate=3e-7" in README_OVERRIDES
    for override in README_OVERRIDES:
        key, value = override.removeprefix("--config.").split("=")
        if key.split(".")[0] in eval_only:
            suite = config_lib.build(SuiteSpec, load_config(str(CONFIGS_DIR / "eval" / "main_suite.py"), [override]),
                                     "config")  # fmt: skip
            assert str(functools.reduce(getattr, key.split("."), suite)) == value, override
            continue
        spec = config_lib.resolve(load_config(str(CONFIGS_DIR / "qwen2_5_vl_7b_staged.py"), [override]), tmp_path)
        key, value = override.removeprefix("--config.").split("=")
        *parents, leaf = key.split(".")
        if parents[:1] == ["stages"] and parents[2:] == ["learner"]:
            resolved = getattr(spec.stage_learner(parents[1]), leaf)
            assert spec.stage_learner("perception").learning_rate == 1e-6
        else:
            resolved = spec
            for name in (*parents, leaf):
                resolved = resolved[name] if isinstance(resolved, dict) else getattr(resolved, name)
        assert str(resolved) == value or resolved == type(resolved)(value), override


def test_every_learner_rollout_and_reward_key_can_be_set_per_stage(tmp_path: Path) -> None:
    overrides = ["--config.stages.merged.learner.kl_coef=0.0", "--config.stages.merged.rollout.overlong_buffer=64",
                 "--config.stages.merged.reward.timeout_s=9.0", "--config.learner.share_prompts=False"]  # fmt: skip
    spec = config_lib.resolve(load_config(str(CONFIGS_DIR / "qwen2_5_vl_7b_merged.py"), overrides), tmp_path)
    learner, rollout = spec.stage_learner("merged"), spec.stage_rollout("merged")
    assert (learner.kl_coef, learner.learning_rate, learner.share_prompts) == (0.0, 1e-6, False)
    assert (rollout.overlong_buffer, rollout.n, spec.stage_reward("merged").timeout_s) == (64, 5, 9.0)
    with pytest.raises(config_lib.ConfigKeyError, match="config.stages.merged.learner.learning_rate"):
        load_config(str(CONFIGS_DIR / "qwen2_5_vl_7b_merged.py"), ["--config.stages.merged.learner.learning_rate=x"])


def test_trainable_is_a_stage_setting(tmp_path: Path) -> None:
    config = recipes.paper("/m")
    config.learner.trainable = (r"^visual\.",)
    with pytest.raises(config_lib.ConfigKeyError, match=r"^config\.learner\.trainable: each stage says what it "):
        config_lib.resolve(config, tmp_path)
    config = recipes.paper("/m")
    config.stages.perception.learner.trainable = (r"^visual\.",)
    with pytest.raises(config_lib.ConfigKeyError, match=r"^config\.stages\.perception\.learner\.trainable: set "
                       r"config\.stages\.perception\.trainable instead$"):  # fmt: skip
        config_lib.resolve(config, tmp_path)


def test_merged_rejects_what_it_cannot_merge() -> None:
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
