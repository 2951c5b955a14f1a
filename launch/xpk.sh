#!/usr/bin/env bash
# Train on a TPU slice of a GKE cluster through xpk (`xpk workload create`): every host of the slice runs
# `python -m staged_vlm_jax train --distributed` in $IMAGE. Design target: 256 chips, e.g. TPU_TYPE v5p-512 or
# v4-512 (those names count TensorCores, 2 per chip). A template: checked with bash -n / shellcheck, not run.
#
#   CLUSTER=my-gke IMAGE=us-docker.pkg.dev/my-project/my-repo/staged-vlm:latest \
#   WORKDIR=/mnt/shared/runs/qwen25_staged launch/xpk.sh \
#       --config.model.path=/mnt/shared/ckpt/Qwen2.5-VL-7B-Instruct \
#       --config.data.sources.perception.path=/mnt/shared/data/perception.jsonl \
#       --config.data.sources.text_reasoning.path=/mnt/shared/data/orz_math_13k.jsonl \
#       --config.data.sources.visual_reasoning.path=/mnt/shared/data/visual_reasoning.jsonl
#
# $IMAGE must hold this repository at $IMAGE_REPO_DIR, installed with `pip install -e ".[tpu]"` (see
# launch/README.md). Arguments go to `staged-vlm train` unchanged. The JobSet is restarted up to $MAX_RESTARTS
# times (preemption, host failure, and with --restart-on-user-code-failure a crash too); each restart reruns the
# command, which resumes from the latest checkpoint in $WORKDIR/checkpoints.
#
# Environment (default):
#   CLUSTER        (required) GKE cluster created with `xpk cluster create`
#   IMAGE          (required) docker image with the repository installed
#   WORKDIR        (required) run directory, the same shared storage in every pod
#   WORKLOAD       (staged-vlm-<date>-<time>) workload name (lowercase letters, digits, '-')
#   TPU_TYPE       (v5p-512) TPU type of the slice
#   NUM_SLICES     (1) slices; more than 1 is untested: the mesh is not split over slices (DCN)
#   CONFIG         (configs/qwen2_5_vl_7b_staged.py) config file, relative to IMAGE_REPO_DIR
#   IMAGE_REPO_DIR (/app) the repository's directory inside the image
#   PYTHON         (python3) interpreter inside the image
#   MAX_RESTARTS   (3) JobSet restarts on failure (xpk --max-restarts)
#   PROJECT, ZONE  (xpk's / gcloud's defaults) GCP project and zone of the cluster
#   XPK            (xpk) the xpk executable
#   XPK_ARGS       (empty) more `xpk workload create` flags, split on spaces, e.g. "--priority=high --spot"
#   XLA_FLAGS, LIBTPU_INIT_ARGS  forwarded to the workload only when set here
set -euo pipefail

: "${CLUSTER:?set CLUSTER}" "${IMAGE:?set IMAGE}" "${WORKDIR:?set WORKDIR (shared storage every pod sees)}"
WORKLOAD="${WORKLOAD:-staged-vlm-$(date +%m%d-%H%M)}"
TPU_TYPE="${TPU_TYPE:-v5p-512}" NUM_SLICES="${NUM_SLICES:-1}" MAX_RESTARTS="${MAX_RESTARTS:-3}"
CONFIG="${CONFIG:-configs/qwen2_5_vl_7b_staged.py}" IMAGE_REPO_DIR="${IMAGE_REPO_DIR:-/app}"
PYTHON="${PYTHON:-python3}" XPK="${XPK:-xpk}"
read -r -a xpk_args <<<"${XPK_ARGS:-}"

exports=""
for var in XLA_FLAGS LIBTPU_INIT_ARGS; do
  [[ -z "${!var+set}" ]] || exports+="export $var=$(printf %q "${!var}"); "
done
command="cd $(printf %q "$IMAGE_REPO_DIR") && ${exports}$(printf %q "$PYTHON") -m staged_vlm_jax train --distributed"
command+=" --config $(printf %q "$CONFIG") --workdir $(printf %q "$WORKDIR")"
(($# == 0)) || command+=" $(printf '%q ' "$@")"

exec "$XPK" workload create --cluster "$CLUSTER" --workload "$WORKLOAD" --tpu-type "$TPU_TYPE" \
  --num-slices "$NUM_SLICES" --docker-image "$IMAGE" --max-restarts "$MAX_RESTARTS" \
  ${PROJECT:+--project "$PROJECT"} ${ZONE:+--zone "$ZONE"} ${xpk_args[@]+"${xpk_args[@]}"} --command "$command"
