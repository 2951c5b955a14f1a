#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice (one process per host, `--distributed`), through
# `gcloud compute tpus tpu-vm ssh --worker=all`. Design target: 256 chips, e.g. TPU type v5p-512 or v4-512
# (those names count TensorCores, 2 per chip). A template: checked with bash -n / shellcheck, not run on a pod.
#
#   TPU_NAME=my-pod ZONE=us-east5-a WORKDIR=/mnt/shared/runs/qwen25_staged SETUP=1 launch/tpu_pod.sh \
#       --config.model.path=/ckpt/Qwen2.5-VL-7B-Instruct \
#       --config.data.sources.perception.path=/mnt/shared/data/perception.jsonl \
#       --config.data.sources.text_reasoning.path=/mnt/shared/data/orz_math_13k.jsonl \
#       --config.data.sources.visual_reasoning.path=/mnt/shared/data/visual_reasoning.jsonl
#
# Arguments go to `staged-vlm train` unchanged (--config.key=value overrides, --allow-config-change). Rerunning
# the same command resumes from the latest checkpoint in $WORKDIR/checkpoints. WORKDIR and every model/data path
# must resolve to the same files on every worker (see launch/README.md).
#
# Environment (default):
#   TPU_NAME          (required) TPU VM name
#   ZONE              (required) its zone
#   PROJECT           (gcloud's configured project) GCP project
#   WORKDIR           (required) run directory, the same shared storage on every worker
#   CONFIG            (configs/qwen2_5_vl_7b_staged.py) config file, relative to REPO_DIR
#   REPO_DIR          (~/staged_vlm_jax) the repository checkout on each worker
#   PYTHON            (python3) interpreter on the workers (a virtualenv's python works too)
#   SETUP             (0) 1: first put the repository in REPO_DIR on every worker and `pip install -e ".[tpu]"`
#   REPO_URL          (unset) with SETUP=1: `git clone` (or fetch) this URL on each worker; unset: copy this
#                     checkout's tracked and untracked-but-not-ignored files there instead
#   REPO_REF          (origin/HEAD) with REPO_URL: what to check out after fetching: origin/<branch>, a tag or a
#                     commit (origin/HEAD: the remote's default branch)
#   DETACH            (0) 1: start training in the background on each worker (nohup, log ~/staged_vlm_train.log)
#                     and return; 0: stream every worker's output here (the run dies if this ssh session does)
#   XLA_FLAGS, LIBTPU_INIT_ARGS  forwarded to the workers only when set here
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (shared storage every worker sees)}"
CONFIG="${CONFIG:-configs/qwen2_5_vl_7b_staged.py}"
# shellcheck disable=SC2088  # ~ is expanded on the workers, not here
default_repo='~/staged_vlm_jax'
REPO_DIR="${REPO_DIR:-$default_repo}"
PYTHON="${PYTHON:-python3}"
SETUP="${SETUP:-0}" DETACH="${DETACH:-0}" REPO_URL="${REPO_URL:-}" REPO_REF="${REPO_REF:-origin/HEAD}"

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone "$ZONE" ${PROJECT:+--project "$PROJECT"})
on_all_workers() { "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command "$1"; }

# A path for the workers' shell: a leading ~/ becomes $HOME/, the rest is quoted.
# shellcheck disable=SC2016  # $HOME is expanded on the workers
remote_path() { case "$1" in '~/'*) printf '"$HOME"/%q' "${1#\~/}" ;; *) printf '%q' "$1" ;; esac; }
repo=$(remote_path "$REPO_DIR")

if [[ "$SETUP" == 1 ]]; then
  if [[ -n "$REPO_URL" ]]; then
    fetch="if [ -d $repo/.git ]; then git -C $repo fetch --tags origin; else git clone $(printf %q "$REPO_URL") $repo; fi"
    fetch+=" && git -C $repo checkout --detach $(printf %q "$REPO_REF")"
  else  # copy this checkout (what `git ls-files` lists that exists) to every worker
    root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
    tarball=$(mktemp "${TMPDIR:-/tmp}/staged_vlm_jax.XXXXXX.tgz")
    trap 'rm -f "$tarball"' EXIT
    (cd "$root" && git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do if [[ -e "$f" ]]; then printf '%s\0' "$f"; fi; done |
      tar --null -T - -czf "$tarball")
    "${gcloud_tpu[@]}" scp "$tarball" "$TPU_NAME:staged_vlm_jax_src.tgz" "${where[@]}" --worker=all
    fetch="mkdir -p $repo && tar -xzf staged_vlm_jax_src.tgz -C $repo && rm staged_vlm_jax_src.tgz"
  fi
  on_all_workers "set -e; $fetch; cd $repo && $(printf %q "$PYTHON") -m pip install -e '.[tpu]'"
fi

exports=""
for var in XLA_FLAGS LIBTPU_INIT_ARGS; do
  [[ -z "${!var+set}" ]] || exports+="export $var=$(printf %q "${!var}"); "
done
train="$(printf %q "$PYTHON") -m staged_vlm_jax train --distributed --config $(printf %q "$CONFIG")"
train+=" --workdir $(printf %q "$WORKDIR")"
(($# == 0)) || train+=" $(printf '%q ' "$@")"

if [[ "$DETACH" == 1 ]]; then
  on_all_workers "cd $repo && ${exports}nohup $train > \"\$HOME/staged_vlm_train.log\" 2>&1 < /dev/null & echo started"
else
  on_all_workers "cd $repo && ${exports}exec $train"
fi
