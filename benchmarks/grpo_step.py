"""Seconds per full GRPO step (rollout + reference log-probs + update) of ours against google-tunix's GRPOLearner.

Both sides train the same tiny Qwen2-shaped text model: 128 hidden, 2 layers, 4 query / 2 KV heads of 32, MLP 256,
vocabulary 1024, untied LM head, RoPE theta 10000, RMSNorm eps 1e-6, float32. Ours is our Qwen2.5-VL (its vision
tower is the smallest the config allows, frozen and never called; text-only M-RoPE is plain RoPE). Its text
weights are drawn at unit activation scale, so that attention is far from uniform, and copied into tunix's
``models.qwen2.Qwen2`` (`tunix_weights` has the name and layout mapping). Before timing, the script checks that
both models give the same per-token log-probs for left-padded prompts and completions. It compares tunix's
``rl.common.compute_per_token_logps``, the function its reference and loss use, against our
``learner.response_log_probs``, and stops if any log-prob differs by more than 1e-4.

Workload, the same on both sides: 4 prompts × 4 generations per step, prompts of exactly 32 tokens, exactly 32
sampled tokens at temperature 1 with no top-p / top-k. The EOS id is the vocabulary size and the pad id the
vocabulary size + 1, which neither sampler can draw; prompts are full length, so no pad ever enters a batch. The
reward is 1 when a completion starts with a token id below 100, else 0. Both sides get the same new prompts and a
new seed every step. The objective options are set alike on both sides (`OBJECTIVE` and `tunix_algo_config`):
GRPO advantages (r − mean) / (std with ddof 1 + 1e-6); token-mean loss; clip ε 0.2 / ε_high 0.3 with dual clip
3.0; k3 ("low_var_kl") KL with β 0.01, clamped to ±10; one AdamW update per step (the same optax chain, global-norm
clip 1.0); μ = 1; log-probs divided by the rollout temperature. Ours trains only the text model and LM head,
which are exactly tunix's parameters.

Timing: one compile step per side, then ``--steps`` steady steps, alternating ours and tunix (A, B, A, B, ...) in
one process. Each phase is reported as the median over the steady steps.

- Ours: `GRPOTrainer.step`, with phases from its ``time/rollout_s`` and ``time/train_s`` metrics. Our train step is
  one compiled program: old log-probs (ours always recomputes them, EasyR1 style), reference log-probs, then the
  update. So its reference log-probs sit inside "update". They are also timed on their own, as the jitted
  `Learner.log_probs` of the reference weights on a batch of the same shape, run after each step and kept out of
  the step's time.
- tunix: one step of ``RLLearner.train``, run without its data-loader thread and queue. That is the learner's own
  ``_generate_and_compute_advantage`` (rollout, reference log-probs, rewards, advantages) followed by
  ``RLCluster.update_actor`` (jitted loss + grad + optimizer) on the ``[TrainExample]`` the loop would have queued.
  Its phases come from timers around ``RLCluster.generate``, ``RLCluster.get_ref_per_token_logps`` (blocked until
  ready) and ``RLCluster.update_actor``.
- "rewards + host" is the rest of the step: decoding, reward, advantages, batch assembly and metrics.

tunix is not a dependency of this package. It goes in a virtualenv of its own, and this script runs there, with our
package taken from the working tree through ``PYTHONPATH`` (the tunix install already brings everything our
package imports here)::

    python3 -m venv /tmp/tunix_venv
    /tmp/tunix_venv/bin/pip install google-tunix==0.1.7   # jax/jaxlib 0.10.2, flax 0.12.8, optax 0.2.8
    PYTHONPATH=. /tmp/tunix_venv/bin/python benchmarks/grpo_step.py [--steps 30]

Run it from the repository root.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh
from tunix.models.qwen2 import model as tunix_qwen2
from tunix.rl import common as tunix_common
from tunix.rl import rl_cluster as tunix_cluster
from tunix.rl.grpo import grpo_learner
from tunix.rl.rollout import base_rollout

from staged_vlm_jax import models
from staged_vlm_jax.data.batch import PromptBatch
from staged_vlm_jax.models.qwen2_5_vl import Qwen2_5_VL, Qwen2_5_VLConfig, tiny_config
from staged_vlm_jax.rl.grpo import GRPOTrainer, RolloutConfig
from staged_vlm_jax.rl.learner import Learner, LearnerConfig, TrainBatch, make_optimizer, response_log_probs
from staged_vlm_jax.rl.rollout import EngineConfig, RolloutEngine

PROMPTS, GENERATIONS, PROMPT_LEN, NEW_TOKENS = 4, 4, 32, 32
VOCAB = 1024
# Outside the vocabulary, so no sampler draws them: every completion has NEW_TOKENS tokens, and tunix (which masks
# every pad-id token out of a completion) trains on all of them. Prompts are full length, so no pad is ever embedded.
EOS, PAD = VOCAB, VOCAB + 1
REWARD_BELOW = 100  # reward 1 iff the completion's first token id is below this
PARITY_TOLERANCE = 1e-4

# Our EasyR1 defaults, with one mini-batch (one optimizer update per step, as tunix) and only text weights trained.
OBJECTIVE = LearnerConfig(num_minibatches=1, trainable=(r"^language_model\.", r"^lm_head\."))


def bench_config() -> Qwen2_5_VLConfig:
    return tiny_config(
        VOCAB,
        text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rope_theta=10000.0, mrope_section=(4, 6, 6)),
        vision=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=1, out_hidden_size=128,
                    fullatt_block_indexes=(0,)),
    )  # fmt: skip


def randomize_text_weights(model: Qwen2_5_VL, seed: int) -> None:
    """Draws the text weights again at unit activation scale: kernels N(0, 1/fan_in), embeddings N(0, 1), norm
    scales 1 + N(0, 0.1²), biases N(0, 0.1²). With the default 0.02 init, attention would be almost uniform, and
    the parity check could not catch a RoPE, bias or norm mismatch."""
    params = nnx.state(model, nnx.Param)
    weights = params.to_pure_dict()
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(weights))))

    def draw(path: tuple[Any, ...], x: jax.Array) -> jax.Array:
        noise = jax.random.normal(next(keys), x.shape, x.dtype)
        if path[0] == "visual":
            return x
        if path[-1] == "kernel":
            return noise / np.sqrt(x.shape[0])
        if path[-1] == "bias":
            return 0.1 * noise
        return 1.0 + 0.1 * noise if x.ndim == 1 else noise  # norm scale / embedding table

    nnx.replace_by_pure_dict(params, jax.tree.map_with_path(lambda p, x: draw(tuple(k.key for k in p), x), weights))
    nnx.update(model, params)


# -- the same weights in tunix's Qwen2 --------------------------------------------------------------------------------


def tunix_config(cfg: Qwen2_5_VLConfig) -> tunix_qwen2.ModelConfig:
    t = cfg.text
    return tunix_qwen2.ModelConfig(
        num_layers=t.num_hidden_layers,
        vocab_size=t.vocab_size,
        embed_dim=t.hidden_size,
        hidden_dim=t.intermediate_size,
        num_heads=t.num_attention_heads,
        head_dim=t.head_dim,
        num_kv_heads=t.num_key_value_heads,
        rope_theta=int(t.rope_theta),
        norm_eps=t.rms_norm_eps,
        use_tied_embedding=cfg.tie_word_embeddings,
    )


def tunix_weights(model: Qwen2_5_VL) -> dict[str, Any]:
    """Our text weights under tunix's Qwen2 names, as a pure state dict.

    Our projections are [in, out] kernels; tunix splits the head axis out: q/k/v [D, heads, head_dim] and o
    [heads, head_dim, D]. The q/k/v biases stay flat [heads · head_dim]. MLP kernels keep our layout; norms are
    ``w``; the untied LM head is ``lm_head.w`` [D, vocab].
    """
    t = model.cfg.text
    lm = model.language_model

    def split_heads(kernel: nnx.Param, heads: int) -> jax.Array:
        return jnp.copy(kernel[...]).reshape(t.hidden_size, heads, t.head_dim)

    def layer(block: Any) -> dict[str, Any]:
        attn, mlp = block.self_attn, block.mlp
        return {
            "input_layernorm": {"w": jnp.copy(block.input_layernorm.weight[...])},
            "post_attention_layernorm": {"w": jnp.copy(block.post_attention_layernorm.weight[...])},
            "attn": {
                "q_proj": {"w": split_heads(attn.q_proj.kernel, t.num_attention_heads)},
                "k_proj": {"w": split_heads(attn.k_proj.kernel, t.num_key_value_heads)},
                "v_proj": {"w": split_heads(attn.v_proj.kernel, t.num_key_value_heads)},
                "o_proj": {"w": jnp.copy(attn.o_proj.kernel[...]).reshape(t.num_attention_heads, t.head_dim, -1)},
                "q_bias": jnp.copy(attn.q_proj.bias[...]),
                "k_bias": jnp.copy(attn.k_proj.bias[...]),
                "v_bias": jnp.copy(attn.v_proj.bias[...]),
            },
            "mlp": {name: {"kernel": jnp.copy(getattr(mlp, name).kernel[...])} for name in ("gate_proj", "up_proj",
                                                                                            "down_proj")},
        }  # fmt: skip

    graphdef, stacked = nnx.split(lm.layers)  # our layers are stacked [L, ...]; tunix keeps one module per layer
    blocks = [nnx.merge(graphdef, jax.tree.map(lambda x, i=i: x[i], stacked)) for i in range(t.num_hidden_layers)]
    weights = {
        "embedder": {"input_embedding": jnp.copy(lm.embed_tokens.weight[...])},
        "layers": {i: layer(block) for i, block in enumerate(blocks)},
        "final_norm": {"w": jnp.copy(lm.norm.weight[...])},
    }
    if model.lm_head is not None:
        weights["lm_head"] = {"w": jnp.copy(model.lm_head.kernel[...])}
    return weights


def tunix_mesh() -> Mesh:
    """The one-device mesh tunix's roles run on. Auto axes: with jax 0.10's default Explicit axes, tunix's
    embedding gather fails."""
    return jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(AxisType.Auto,) * 2)


def tunix_model(model: Qwen2_5_VL, mesh: Mesh) -> tunix_qwen2.Qwen2:
    """tunix's Qwen2 holding a copy of our text weights, placed on ``mesh`` by its parameters' shardings."""
    with jax.set_mesh(mesh):
        abstract = nnx.eval_shape(lambda: tunix_qwen2.Qwen2(tunix_config(model.cfg), rngs=nnx.Rngs(params=0)))
    graphdef, state = nnx.split(abstract)
    shardings = nnx.get_named_sharding(state, mesh).to_pure_dict()
    return nnx.merge(graphdef, jax.device_put(tunix_weights(model), shardings))


def check_parity(ours: Qwen2_5_VL, theirs: tunix_qwen2.Qwen2, pad: int, seed: int = 0) -> float:
    """Largest |Δ log-prob| between the two models on prompts left-padded with ``pad`` (32, 28, 20, 12 real tokens,
    ids below ``pad``) and 32-token completions, each side through its own training-time log-prob function."""
    rng = np.random.default_rng(seed)
    prompts = np.full((4, PROMPT_LEN), pad, np.int32)
    for row, length in enumerate((32, 28, 20, 12)):
        prompts[row, PROMPT_LEN - length :] = rng.integers(0, pad, length)
    completions = rng.integers(0, pad, (4, NEW_TOKENS)).astype(np.int32)
    batch = TrainBatch(
        input_ids=np.concatenate([prompts, completions], axis=1),
        attention_mask=np.concatenate([prompts != pad, np.ones_like(completions, bool)], axis=1).astype(np.int32),
        response_mask=np.ones_like(completions),
        advantages=np.zeros(4, np.float32),
    )
    expected = response_log_probs(ours, batch, 1.0)[0]
    graphdef, state = nnx.split(theirs)
    got = tunix_common.compute_per_token_logps(
        graphdef, state, prompt_tokens=jnp.asarray(prompts), completion_tokens=jnp.asarray(completions),
        pad_id=pad, eos_id=EOS, temperature=1.0,
    )  # fmt: skip
    return float(jnp.max(jnp.abs(got - expected)))


# -- shared pieces: tokenizer, reward, prompts ------------------------------------------------------------------------


def decode(ids: Sequence[int]) -> str:
    return " ".join(map(str, ids))


class IdTokenizer:
    """Text is token ids in decimal, separated by spaces; no BOS. It has the methods tunix's tokenizer adapter
    accepts from any object."""

    def encode(self, text: str, **_: Any) -> list[int]:
        return [int(token) for token in text.split()]

    def decode(self, ids: Sequence[int], **_: Any) -> str:
        return decode(ids)

    def bos_id(self) -> None:
        return None

    def eos_id(self) -> int:
        return EOS

    def pad_id(self) -> int:
        return PAD


def reward(completion: str) -> float:
    return float(int(completion.split()[0]) < REWARD_BELOW) if completion else 0.0


def our_score(responses: Sequence[str], _: Sequence[str]) -> tuple[list[dict[str, float]], dict[str, float]]:
    return [{"overall": reward(r)} for r in responses], {}


def tunix_reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    return [reward(c) for c in completions]


# -- the two learners -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class ClippedGRPOConfig(grpo_learner.GRPOConfig):
    """tunix's GRPOConfig plus two clip options that its ``grpo_loss_fn`` reads when the config has them: the upper
    clip ε_high and the dual-clip constant ε_c. GRPOConfig itself has neither."""

    epsilon_high: float
    epsilon_c: float


def tunix_algo_config(cfg: LearnerConfig) -> ClippedGRPOConfig:
    """``cfg``'s objective in tunix's terms (token-mean, k3 = "low_var_kl" clamped to ±10 like our k3, μ = 1)."""
    if (cfg.loss_agg, cfg.kl_kind, cfg.loss_type) != ("token-mean", "k3", "grpo"):
        raise ValueError("the tunix side is configured for token-mean GRPO with a k3 KL only")
    return ClippedGRPOConfig(
        num_generations=GENERATIONS,
        num_iterations=1,
        beta=cfg.kl_coef,
        kl_loss_mode="low_var_kl",
        kl_clamp_value=10.0,
        loss_agg_mode="token-mean",
        epsilon=cfg.clip_low,
        epsilon_high=cfg.clip_high,
        epsilon_c=cfg.clip_dual,
    )


def make_ours(model: Qwen2_5_VL, share_prompts: bool) -> GRPOTrainer:
    engine = RolloutEngine(EngineConfig(prompt_buckets=(PROMPT_LEN,), new_token_buckets=(NEW_TOKENS,)))
    return GRPOTrainer(
        Learner(model, dataclasses.replace(OBJECTIVE, share_prompts=share_prompts)), engine, our_score, decode,
        RolloutConfig(n=GENERATIONS, max_new_tokens=NEW_TOKENS, temperature=1.0, top_p=1.0, top_k=0),
        eos_token_ids=(EOS,), pad_token_id=PAD,
    )  # fmt: skip


def make_tunix(model: Qwen2_5_VL) -> grpo_learner.GRPOLearner:
    mesh = tunix_mesh()
    roles = (tunix_cluster.Role.ACTOR, tunix_cluster.Role.REFERENCE, tunix_cluster.Role.ROLLOUT)
    cluster = tunix_cluster.RLCluster(
        actor=tunix_model(model, mesh),
        reference=tunix_model(model, mesh),
        tokenizer=IdTokenizer(),
        cluster_config=tunix_cluster.ClusterConfig(
            role_to_mesh=dict.fromkeys(roles, mesh),
            rollout_engine="vanilla",
            training_config=tunix_cluster.RLTrainingConfig(
                actor_optimizer=make_optimizer(OBJECTIVE),
                eval_every_n_steps=10**9,
                rollout_micro_batch_size=PROMPTS,
                compute_logps_micro_batch_size=PROMPTS,
            ),
            rollout_config=base_rollout.RolloutConfig(
                max_tokens_to_generate=NEW_TOKENS,
                max_prompt_length=PROMPT_LEN,
                kv_cache_size=PROMPT_LEN + NEW_TOKENS,
                temperature=1.0,
                top_p=1.0,
                top_k=None,
            ),
        ),
    )
    return grpo_learner.GRPOLearner(cluster, tunix_algo_config(OBJECTIVE), reward_fns=[tunix_reward])


# -- one timed step of each -------------------------------------------------------------------------------------------


def our_step(trainer: GRPOTrainer, ids: np.ndarray, seed: int) -> dict[str, float]:
    start = time.perf_counter()
    metrics = trainer.step(PromptBatch(ids, np.ones_like(ids), [""] * len(ids)), jax.random.key(seed))
    step = time.perf_counter() - start
    if metrics["response_length/mean"] != NEW_TOKENS:
        raise SystemExit(f"ours generated {metrics['response_length/mean']} tokens per row, not {NEW_TOKENS}")
    rollout, update = metrics["time/rollout_s"], metrics["time/train_s"]
    return {"rollout": rollout, "update": update, "host": step - rollout - update, "step": step}


def our_ref_log_probs(trainer: GRPOTrainer) -> Callable[[TrainBatch], jax.Array]:
    """Our train step's reference log-probs as a program of their own (the step itself runs them inside)."""
    learner = trainer.learner
    one_chunk = lambda batch: jax.tree.map(lambda x: x[None], batch)  # all rows as one micro-batch
    program = jax.jit(lambda state, batch: learner.log_probs(state.ref_params, state.frozen, one_chunk(batch)))
    return lambda batch: program(learner.state, batch).block_until_ready()


def time_calls(times: dict[str, float], target: Any, names: dict[str, str]) -> None:
    """Wraps ``target``'s methods (method name -> phase) to record each call's wall time (array results are
    waited for)."""
    for method, phase in names.items():
        inner = getattr(target, method)

        def timed(*args: Any, _inner: Callable[..., Any] = inner, _phase: str = phase, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = _inner(*args, **kwargs)
            if isinstance(out, jax.Array):
                out.block_until_ready()
            times[_phase] = time.perf_counter() - start
            return out

        setattr(target, method, timed)


def tunix_step(learner: grpo_learner.GRPOLearner, times: dict[str, float], ids: np.ndarray, seed: int) -> None:
    """One step of tunix's ``RLLearner.train`` loop without its data thread and queue; fills ``times``."""
    cluster = learner.rl_cluster
    cluster.cluster_config.rollout_config.seed = seed
    start = time.perf_counter()
    prompts = np.array([decode(row) for row in ids])
    example = learner._generate_and_compute_advantage({"prompts": np.repeat(prompts, GENERATIONS)})
    cluster.update_actor([example], None, False)
    jax.block_until_ready(nnx.state(cluster.actor_trainer.model))
    cluster.global_steps += 1
    times["step"] = time.perf_counter() - start
    times["host"] = times["step"] - times["rollout"] - times["ref"] - times["update"]
    if not bool(jnp.all(example.completion_mask)):  # a row cut short is right-padded, and pads are masked
        raise SystemExit(f"tunix did not generate {NEW_TOKENS} unmasked tokens in every row")


# -- report -----------------------------------------------------------------------------------------------------------


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}"


def print_table(first: dict[str, dict[str, float]], steady: dict[str, list[dict[str, float]]], ref_alone: float,
                ref_alone_first: float) -> None:  # fmt: skip
    median = {side: {p: statistics.median(s[p] for s in steps) for p in steps[0]} for side, steps in steady.items()}
    for side in ("ours", "tunix"):
        for d in (first[side], median[side]):
            d["ref+update"] = d.get("ref", 0.0) + d["update"]
    labels = {
        "rollout": "rollout (prefill + decode)",
        "ref": "reference log-probs",
        "update": "update (ours: old + ref log-probs, loss, grad, AdamW)",
        "ref+update": "ref log-probs + update",
        "host": "rewards + host",
        "step": "**full step**",
    }
    print("| phase | ours, median (s) | tunix, median (s) | tunix / ours | ours, 1st step (s) | tunix, 1st step (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for phase, label in labels.items():
        ours, theirs = median["ours"].get(phase), median["tunix"][phase]
        ratio = "-" if ours is None else f"{theirs / ours:.2f}×"
        if phase == "ref":
            ours_cell, first_cell = f"(in update; alone {fmt(ref_alone)})", f"(alone {fmt(ref_alone_first)})"
        else:
            ours_cell, first_cell = fmt(ours), fmt(first["ours"][phase])
        print(f"| {label} | {ours_cell} | {fmt(theirs)} | {ratio} | {first_cell} | {fmt(first['tunix'][phase])} |")
    totals = [s["step"] for s in steady["ours"]], [s["step"] for s in steady["tunix"]]
    spread = ", ".join(f"{side} {min(t):.3f}–{max(t):.3f} s" for side, t in zip(("ours", "tunix"), totals, strict=True))
    print(f"\nsteady full-step range: {spread}")
    print(f"speed-up (tunix / ours, median full step): {median['tunix']['step'] / median['ours']['step']:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="steady steps per side, after one compile step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-share-prompts", dest="share_prompts", action="store_false",
                        help="ours runs every row's prompt (learner.share_prompts=False), as tunix does")  # fmt: skip
    args = parser.parse_args()
    load = os.getloadavg()

    cfg = bench_config()
    model = models.create(cfg, seed=args.seed)
    randomize_text_weights(model, args.seed)
    ids_below = cfg.text.pad_token_id  # prompt and parity tokens avoid the vocabulary's special ids
    delta = check_parity(model, tunix_model(model, tunix_mesh()), ids_below, args.seed)
    print(f"log-prob parity (float32): max |Δ log-prob| = {delta:.2e} (tolerance {PARITY_TOLERANCE:.0e})")
    if not delta <= PARITY_TOLERANCE:
        raise SystemExit(f"parity check failed: max |Δ log-prob| {delta:.2e} > {PARITY_TOLERANCE:.0e}")

    ours, theirs = make_ours(model, args.share_prompts), make_tunix(model)
    tunix_times: dict[str, float] = {}
    time_calls(tunix_times, theirs.rl_cluster,
               {"generate": "rollout", "get_ref_per_token_logps": "ref", "update_actor": "update"})  # fmt: skip
    ref_alone = our_ref_log_probs(ours)
    rng = np.random.default_rng(args.seed)
    rows = PROMPTS * GENERATIONS
    prompts = np.repeat(rng.integers(0, ids_below, (PROMPTS, PROMPT_LEN)), GENERATIONS, 0)
    ref_batch = TrainBatch(  # the step's layout: groups of GENERATIONS rows sharing a prompt
        input_ids=np.concatenate([prompts, rng.integers(0, ids_below, (rows, NEW_TOKENS))], 1).astype(np.int32),
        attention_mask=np.ones((rows, PROMPT_LEN + NEW_TOKENS), np.int32),
        response_mask=np.ones((rows, NEW_TOKENS), np.int32),
        advantages=np.zeros(rows, np.float32),
        group_size=ours.learner.group_size(rows, GENERATIONS),
    )
    steady: dict[str, list[dict[str, float]]] = {"ours": [], "tunix": []}
    ref_times: list[float] = []
    first: dict[str, dict[str, float]] = {}
    for step in range(args.steps + 1):
        ids = rng.integers(0, ids_below, (PROMPTS, PROMPT_LEN)).astype(np.int32)
        ours_times = our_step(ours, ids, args.seed + step)
        start = time.perf_counter()
        ref_alone(ref_batch)
        ref_times.append(time.perf_counter() - start)
        tunix_step(theirs, tunix_times, ids, args.seed + step)
        if step == 0:
            first = {"ours": ours_times, "tunix": dict(tunix_times)}
        else:
            steady["ours"].append(ours_times)
            steady["tunix"].append(dict(tunix_times))

    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.processor() or platform.machine()}, os.cpu_count() = {os.cpu_count()}, "
          f"load average at start {' / '.join(f'{x:.2f}' for x in load)}")  # fmt: skip
    print(f"jax {jax.__version__} ({jax.device_count()} {jax.default_backend()} device), flax {flax.__version__}, "
          f"optax {optax.__version__}, google-tunix {metadata.version('google-tunix')}")  # fmt: skip
    print(f"{PROMPTS} prompts x {GENERATIONS} generations, {PROMPT_LEN} prompt + {NEW_TOKENS} generated tokens, "
          f"float32; medians of {args.steps} steady steps per side, interleaved; ours shares each group's prompt: "
          f"{ref_batch.group_size > 1}\n")  # fmt: skip
    print_table(first, steady, statistics.median(ref_times[1:]), ref_times[0])


if __name__ == "__main__":
    main()
