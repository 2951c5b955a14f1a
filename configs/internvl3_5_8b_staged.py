"""The paper's recipe on InternVL3.5-8B (HF format): GRPO perception -> text reasoning -> visual reasoning with
prompts up to 4096 tokens; unlike InternVL3-8B its text-reasoning stage keeps the shared hyper-parameters (the
official scripts damp InternVL3 only). configs/models/internvl3_5_8b holds the checkpoint's config.json.

    staged-vlm train --config configs/internvl3_5_8b_staged.py --workdir runs/internvl3_5_staged \
        --config.model.path=/ckpt/InternVL3_5-8B-HF \
        --config.data.sources.perception.path=/data/perception.jsonl \
        --config.data.sources.text_reasoning.path=/data/orz_math_13k.jsonl \
        --config.data.sources.visual_reasoning.path=/data/visual_reasoning.jsonl
"""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.internvl(model_path="/ckpt/InternVL3_5-8B-HF")
