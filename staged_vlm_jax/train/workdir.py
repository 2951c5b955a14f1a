"""A run's directory: the config guard, the testbed's synthetic data, and the run's tokenizer.

Rerunning a command on a workdir resumes it, so the workdir must say which run it holds: ``config.json`` is the
resolved config, and a rerun with another config is refused naming the differing keys. The testbed's data and
tokenizer are written into it once, so a resume (or an export) finds exactly what the run trained on.
"""

from __future__ import annotations

import hashlib
import json

import jax
import ml_collections
from etils import epath
from transformers import PreTrainedTokenizerFast

from staged_vlm_jax import models
from staged_vlm_jax.data.schema import CAPABILITIES
from staged_vlm_jax.data.synthetic import write_synthetic
from staged_vlm_jax.data.tokenizer import build_tiny_tokenizer, load_tokenizer
from staged_vlm_jax.models.sharding import barrier
from staged_vlm_jax.paths import as_path, move
from staged_vlm_jax.train import config as config_lib

CONFIG_FILE = "config.json"


class ConfigMismatchError(ValueError):
    """The workdir holds a run of another config; resuming it with this one would silently mix two runs."""


class DataChangedError(ValueError):
    """A data file differs from the one the checkpoint was trained on: the resumed run would draw other rows
    than the interrupted one (its data position indexes the old file)."""


# Files up to this size are hashed whole; larger ones by their size and three 1 MiB samples (start, middle, end).
FULL_HASH_BYTES = 64 * 2**20
_SAMPLE_BYTES = 2**20


def fingerprint(path: epath.Path) -> str:
    """A file's (or a directory's files') content fingerprint: a full SHA-256 where cheap (`FULL_HASH_BYTES`),
    else the size and samples, so an edited, truncated, appended or replaced data file reads as changed."""
    if path.is_dir():  # walked with iterdir: epath refuses rglob (a recursive glob on GCS is thousands of calls)
        digest = hashlib.sha256()
        for child in sorted(path.iterdir()):
            digest.update(f"{child.name}={fingerprint(child)};".encode())
        return f"dir:{digest.hexdigest()}"
    size = path.stat().length
    digest = hashlib.sha256()
    with path.open("rb") as file:
        if size <= FULL_HASH_BYTES:
            while chunk := file.read(1 << 24):
                digest.update(chunk)
            return f"sha256:{digest.hexdigest()}"
        for offset in (0, size // 2, size - _SAMPLE_BYTES):
            file.seek(offset)
            digest.update(file.read(_SAMPLE_BYTES))
    return f"size:{size}:sampled-sha256:{digest.hexdigest()}"


def data_fingerprints(spec: config_lib.RunSpec) -> dict[str, str]:
    """`fingerprint` of every data file the run reads (its stages' and held-out sources), by config key."""
    return {key: fingerprint(as_path(path)) for key, path in spec.input_paths()
            if key.startswith(("config.data.sources.", "config.eval.sources.")) and key.endswith(".path")}  # fmt: skip


def check_data(saved: dict[str, str], current: dict[str, str], checkpoint: str, allow_change: bool) -> None:
    """Raises `DataChangedError` naming the files whose fingerprint differs from ``saved`` (a checkpoint's)."""
    changed = [key for key in current if key in saved and saved[key] != current[key]]
    if changed and not allow_change:
        raise DataChangedError(
            f"{checkpoint}: the data changed since this checkpoint was written ({', '.join(changed)}); a resume "
            "would draw other rows than the interrupted run (use another --workdir, or --allow-data-change)"
        )


def check_inputs(spec: config_lib.RunSpec) -> None:
    """Every path the run reads exists (`RunSpec.input_paths`), checked before anything trains: a typo in an
    evaluation set's path would otherwise surface after the first stage, and again on every rerun."""
    for key, path in spec.input_paths():
        if not as_path(path).exists():
            raise config_lib.ConfigKeyError(f"{key}: {path} not found")
    if spec.model.path:  # the family decides image preprocessing: another family's would fail mid-step, or worse
        family, _ = models.read_config(spec.model.path)
        if family.name != spec.model.family:
            raise config_lib.ConfigKeyError(
                f"config.model.family: {spec.model.family!r}, but {spec.model.path}/config.json is a {family.name!r} "
                f"checkpoint (set --config.model.family={family.name}, or use its configs/ file)"
            )


def check_config(workdir: epath.Path, config: ml_collections.ConfigDict, allow_change: bool) -> None:
    """Writes config.json (first host), or checks it against the one already there (a resume)."""
    path = workdir / CONFIG_FILE
    current = json.loads(config_lib.canonical(config))
    if path.exists():
        saved = json.loads(path.read_text())
        differences = config_lib.config_differences(saved, current)
        if differences and not allow_change:
            raise ConfigMismatchError(
                f"{path}: this workdir was run with another config; differing keys: {', '.join(differences)} "
                "(use another --workdir, or --allow-config-change to resume with the new values)"
            )
    barrier("config read")  # no process reads config.json while process 0 rewrites it
    if jax.process_index() == 0:
        path.write_text(config_lib.canonical(config) + "\n")


def read_spec(workdir: epath.Path) -> config_lib.RunSpec:
    """The resolved config of the run in ``workdir`` (its config.json)."""
    if not (workdir / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{workdir / CONFIG_FILE}: not found; --checkpoint must be a run's checkpoints/")
    return config_lib.resolve(json.loads((workdir / CONFIG_FILE).read_text()), workdir)


def write_synthetic_data(spec: config_lib.RunSpec, workdir: epath.Path) -> None:
    """The testbed's train and held-out sets, written once into workdir/data (atomically: a kill mid-write leaves
    no partial data set behind to be mistaken for a complete one)."""
    synthetic = spec.data.synthetic
    if not synthetic.train_rows:
        return
    if jax.process_index() == 0 and not (workdir / "data").exists():
        _write_synthetic(synthetic, workdir)
    barrier("synthetic data written")  # every process passes here, whoever wrote


def _write_synthetic(synthetic: config_lib.SyntheticSpec, workdir: epath.Path) -> None:
    out = workdir / "data"
    partial = workdir / "data.partial"
    if partial.exists():
        partial.rmtree()
    for split, rows, seed in (("train", synthetic.train_rows, synthetic.seed),
                              ("eval", synthetic.eval_rows, synthetic.seed + 1)):  # fmt: skip
        for capability in CAPABILITIES if rows else ():
            write_synthetic(partial / split, capability, rows, seed=seed, image_size=synthetic.image_size,
                            max_difficulty=synthetic.max_difficulty)  # fmt: skip
    move(partial, out)


def tokenizer(spec: config_lib.RunSpec, workdir: epath.Path) -> PreTrainedTokenizerFast:
    """The run's tokenizer: the offline tiny BPE kept in workdir/tokenizer ("tiny"; built there on first use with the
    model family's special tokens and chat template), a named directory, or the model's own."""
    model = spec.model
    if model.tokenizer == "tiny":
        tiny = workdir / "tokenizer"
        if not (tiny / "tokenizer.json").exists() and jax.process_index() == 0:
            build_tiny_tokenizer(tiny, family=model.family)
        barrier("tokenizer written")
        return load_tokenizer(tiny)
    return load_tokenizer(model.tokenizer or model.path)
