"""The paper's recipe on InternVL3-8B (HF format): GRPO perception -> text reasoning -> visual reasoning, with the
official scripts' InternVL differences: prompts up to 4096 tokens, and a damped text-reasoning stage (learning rate
3e-7 warmed up over 5 % of its steps, KL 5e-2, clip 0.15 / 0.15, gradient norm 0.5). configs/models/internvl3_8b
holds the checkpoint's config.json.

    staged-vlm train --config configs/internvl3_8b_staged.py --workdir runs/internvl3_staged \
        --config.model.path=/ckpt/InternVL3-8B-hf \
        --config.data.sources.perception.path=/data/perception.jsonl \
        --config.data.sources.text_reasoning.path=/data/orz_math_13k.jsonl \
        --config.data.sources.visual_reasoning.path=/data/visual_reasoning.jsonl
"""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.internvl(model_path="/ckpt/InternVL3-8B-hf", damped_text_stage=True)
