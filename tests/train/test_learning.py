"""The testbed's claim in a shorter variant: after an SFT warm start, each GRPO stage raises held-out accuracy on
the capability it trains. The GRPO and held-out sets have one fixed answer per capability (learnable in a few
steps by a tiny model); the warm start sees the ordinary synthetic sets, so it learns the format and spreads its
answers — which is what gives GRPO groups with reward variance to learn from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from staged_vlm_jax.data.schema import CAPABILITIES
from staged_vlm_jax.data.synthetic import write_synthetic
from staged_vlm_jax.train import recipes
from staged_vlm_jax.train.stages import StagedRun

FIXED_ANSWER = {"perception": "B", "text_reasoning": "3", "visual_reasoning": "2"}


def _fixed_answers(path: Path, answer: str) -> Path:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    out = path.with_name(f"fixed_{path.name}")
    out.write_text("".join(json.dumps({**row, "answer": answer}) + "\n" for row in rows))
    return out


def _config(data: Path):
    c = recipes.demo()
    c.model.tiny = dict(vocab_size=512)
    c.data.synthetic.train_rows = 0
    for capability in CAPABILITIES:
        warm = write_synthetic(data / "warm", capability, 64, seed=0, max_difficulty=0.3)
        train = _fixed_answers(write_synthetic(data / "train", capability, 32, seed=1, max_difficulty=0.3),
                               FIXED_ANSWER[capability])  # fmt: skip
        held_out = _fixed_answers(write_synthetic(data / "eval", capability, 16, seed=2, max_difficulty=0.3),
                                  FIXED_ANSWER[capability])  # fmt: skip
        c.data.sources[f"warm_{capability}"] = dict(path=str(warm), capability=capability, image_root="")
        c.data.sources[capability].path = str(train)
        c.eval.sources[f"heldout_{capability}"].path = str(held_out)
    c.stages.warm_start.data = {f"warm_{capability}": 1 for capability in CAPABILITIES}
    c.stages.warm_start.update(epochs=8, batch_size=16)
    c.learner.update(learning_rate=1e-3)  # 3e-3 learns faster but can collapse the format
    c.rollout.n = 8
    c.eval.batch_size = 16
    c.checkpoint.async_save = False
    c.compilation_cache = str(Path("~/.cache/staged_vlm_jax/jax_cache").expanduser())  # the suite's (conftest)
    for name, steps in zip(recipes.CAPABILITY_STAGES, (8, 8, 16), strict=True):
        c.stages[name].update(steps=steps, batch_size=4)
    return c


@pytest.mark.slow
def test_each_grpo_stage_raises_held_out_accuracy_on_its_capability(tmp_path: Path) -> None:
    run = StagedRun(_config(tmp_path / "data"), tmp_path / "run")
    evaluations = {row["after"]: row for row in run.run()}
    accuracy = lambda after, capability: evaluations[after][f"heldout_{capability}"]["accuracy"]
    report = {after: [round(accuracy(after, c), 3) for c in CAPABILITIES] for after in evaluations}
    for capability in recipes.CAPABILITY_STAGES:
        assert accuracy(capability, capability) > accuracy("warm_start", capability), report
