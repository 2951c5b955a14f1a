"""Ablation: Stage 1 is full supervised fine-tuning on detailed captions (DOCCI) instead of perception RL, then GRPO
text reasoning -> visual reasoning. Caption rows use the EasyR1 schema with the caption as ``answer`` and the
paper's request as ``problem`` ("<image>Please generate a detailed caption."); their prompts get no think/boxed
instruction (``append_format=False``) and the target is the caption alone (``response_template="{answer}"``). The
paper used LLaMA-Factory full SFT without stating its hyper-parameters here: 1 epoch at lr 1e-5 is a starting
point to override."""

from staged_vlm_jax.train import recipes


def get_config():
    config = recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct")
    config.data.sources.captions = dict(path="/data/staged_vlm/docci_captions.jsonl", capability="perception",
                                        image_root="", append_format=False)  # fmt: skip
    config.stages.caption_sft = recipes.stage(
        {"captions": 1}, 128, 1, recipes.ALL_PARAMETERS, kind="sft", response_template="{answer}",
        learner={"learning_rate": 1e-5, "micro_batch_size": 32},
    )  # fmt: skip
    config.schedule = ("caption_sft", "text_reasoning", "visual_reasoning")
    return config
