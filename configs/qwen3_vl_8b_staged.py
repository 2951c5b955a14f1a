"""The paper's recipe on Qwen3-VL-8B-Instruct: GRPO perception -> text reasoning -> visual reasoning (the same recipe
as configs/qwen2_5_vl_7b_staged.py; the architecture comes from the checkpoint, configs/models/qwen3_vl_8b holds
its config.json).

    staged-vlm train --config configs/qwen3_vl_8b_staged.py --workdir runs/qwen3_staged \
        --config.model.path=/ckpt/Qwen3-VL-8B-Instruct \
        --config.data.sources.perception.path=/data/perception.jsonl \
        --config.data.sources.text_reasoning.path=/data/orz_math_13k.jsonl \
        --config.data.sources.visual_reasoning.path=/data/visual_reasoning.jsonl
"""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.paper(model_path="/ckpt/Qwen3-VL-8B-Instruct", family="qwen3_vl")
