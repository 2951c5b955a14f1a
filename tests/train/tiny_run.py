"""A few-step variant of configs/demo.py for the end-to-end tests: tiny model, 16 synthetic rows per capability,
SFT 2 steps, then GRPO perception 4 (checkpointed every 2), text reasoning 2 (vision frozen), visual reasoning 2;
held-out sets sampled as the paper's validation at every stage end and every 3 steps."""

from staged_vlm_jax.train import recipes


def get_config():
    c = recipes.demo()
    c.model.tiny = dict(vocab_size=512)  # the family's default tiny config
    c.data.synthetic = dict(train_rows=16, eval_rows=4, image_size=56, seed=0)
    c.rollout.n = 2
    c.rollout.max_new_tokens = 8
    c.engine.new_token_buckets = (8, 16, 32)
    c.eval.max_new_tokens = 8
    c.eval.batch_size = 4
    c.eval.update(every_steps=3, temperature=0.6, top_p=0.95)  # validation at steps 3 and 9 too, sampled
    c.learner.micro_batch_size = 2
    c.checkpoint.every_steps = 2
    c.checkpoint.async_save = True
    c.stages.warm_start.steps = 2
    c.stages.warm_start.batch_size = 4
    c.stages.warm_start.response_template = "<think> </think> \\boxed{{{answer}}}"
    for name, steps in (("perception", 4), ("text_reasoning", 2), ("visual_reasoning", 2)):
        c.stages[name].steps = steps
        c.stages[name].batch_size = 4
    return c
