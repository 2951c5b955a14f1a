"""The paper's recipe on Qwen2.5-VL-7B-Instruct: GRPO perception -> text reasoning -> visual reasoning.

    staged-vlm train --config configs/qwen2_5_vl_7b_staged.py --workdir runs/qwen25_staged \
        --config.model.path=/ckpt/Qwen2.5-VL-7B-Instruct \
        --config.data.sources.perception.path=/data/perception.jsonl \
        --config.data.sources.text_reasoning.path=/data/orz_math_13k.jsonl \
        --config.data.sources.visual_reasoning.path=/data/visual_reasoning.jsonl
"""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct")
