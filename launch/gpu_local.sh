#!/usr/bin/env bash
# Train on one GPU machine (1-8 GPUs): a single process drives every GPU it sees (no --distributed).
#
#   WORKDIR=runs/qwen25_staged launch/gpu_local.sh \
#       --config.model.path=/ckpt/Qwen2.5-VL-7B-Instruct \
#       --config.data.sources.perception.path=/data/perception.jsonl \
#       --config.data.sources.text_reasoning.path=/data/orz_math_13k.jsonl \
#       --config.data.sources.visual_reasoning.path=/data/visual_reasoning.jsonl
#   CONFIG=configs/demo.py WORKDIR=runs/demo launch/gpu_local.sh     # the tiny testbed
#
# Run from the repository root after `pip install -e ".[gpu]"`. Arguments go to `staged-vlm train` unchanged
# (--config.key=value overrides, --allow-config-change). Rerunning the same command resumes from the latest
# checkpoint in $WORKDIR/checkpoints. Pick GPUs with CUDA_VISIBLE_DEVICES.
#
# Environment (default):
#   CONFIG                          (configs/qwen2_5_vl_7b_staged.py) config file
#   WORKDIR                         (runs/<config file name>) run directory
#   XLA_PYTHON_CLIENT_MEM_FRACTION  (0.9) share of each GPU's memory JAX preallocates
#   XLA_FLAGS                       (--xla_gpu_enable_latency_hiding_scheduler=true) replaced, not extended,
#                                   when set
set -euo pipefail

CONFIG="${CONFIG:-configs/qwen2_5_vl_7b_staged.py}"
config_name=$(basename "${CONFIG%%:*}" .py)
WORKDIR="${WORKDIR:-runs/$config_name}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_enable_latency_hiding_scheduler=true}"

exec staged-vlm train --config "$CONFIG" --workdir "$WORKDIR" "$@"
