"""Hugging Face checkpoints <-> NNX models: `load_hf` and `save_hf`.

Parameter paths map to checkpoint names by the family's rename rules (`registry.ModelFamily`); a ``kernel`` is
the transpose of HF's ``weight`` ([in, out] vs [out, in]), everything else is stored as is. A stacked layer
parameter ([L, ...], `layers.stack_layers`) is the L per-layer tensors, the layer index after its stack's path
(``language_model.layers.mlp...`` <-> ``model.layers.{i}.mlp...``). Loading builds an abstract model (no memory),
reads one parameter at a time from the (possibly multi-file) safetensors and, on a mesh, hands each device only
its own slice via ``jax.make_array_from_callback``: the host never holds more than one (stacked) parameter and no
device ever holds a full copy of a sharded parameter.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from staged_vlm_jax import paths
from staged_vlm_jax.models.layers import LAYERS_AXIS
from staged_vlm_jax.models.registry import ModelFamily, get_family
from staged_vlm_jax.models.sharding import DEFAULT_RULES, MeshAxes, logical_to_spec, to_host, variable_axes

INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint directory that does not hold what its config says; the message names file and tensor."""


def checkpoint_names(family: ModelFamily, path: tuple, variable: nnx.Variable) -> tuple[list[str], bool]:
    """(the checkpoint tensor names of one parameter, whether they are stored transposed): one name, or one per
    layer of a stacked parameter."""
    *modules, leaf = (str(p) for p in path)
    dotted = ".".join([*modules, "weight" if leaf in ("kernel", "weight") else leaf])
    if _stacked(variable):
        stack = next(p for p in family.stacked_layers if dotted.startswith(p + "."))
        dotted = [f"{stack}.{i}{dotted[len(stack) :]}" for i in range(variable.shape[0])]
    else:
        dotted = [dotted]
    names = []
    for name in dotted:
        for pattern, replacement in family.hf_renames:
            name = re.sub(pattern, replacement, name)
        names.append(name)
    return names, leaf == "kernel"


def _stacked(variable: nnx.Variable) -> bool:
    """Whether ``variable`` holds every layer of a stack ([L, ...], `layers.stack_layers`)."""
    return variable_axes(variable)[0] == LAYERS_AXIS


def _layer_shape(variable: nnx.Variable) -> tuple[int, ...]:
    """One checkpoint tensor's share of a parameter: a stacked one's per-layer shape."""
    return tuple(variable.shape[1:] if _stacked(variable) else variable.shape)


def _hf_shape(family: ModelFamily, cfg, name: str, shape: tuple[int, ...], transposed: bool) -> tuple[int, ...]:
    special = family.hf_shapes(cfg)
    if name in special:
        return special[name]
    return (math.prod(shape[1:]), shape[0]) if transposed else tuple(shape)


def _to_ours(array: np.ndarray, shape: tuple[int, ...], transposed: bool) -> np.ndarray:
    if transposed:
        array = array.reshape(array.shape[0], -1).T
    return array.reshape(shape)


def _to_hf(array: np.ndarray, hf_shape: tuple[int, ...], transposed: bool) -> np.ndarray:
    if transposed:
        array = array.reshape(array.shape[0], -1).T
    return np.ascontiguousarray(array.reshape(hf_shape))


def _canonical(family: ModelFamily, name: str) -> str:
    for alias, canonical in family.hf_aliases:
        if name.startswith(alias):
            return canonical + name[len(alias) :]
    return name


def _tensor_files(family: ModelFamily, directory: Path) -> dict[str, tuple[Path, str]]:
    """Canonical tensor name -> (safetensors file, stored name), from the index.json or by listing the files."""
    index = directory / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from e
        return {_canonical(family, k): (directory / v, k) for k, v in weight_map.items()}
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no *.safetensors files and no {INDEX_FILE}")
    mapping = {}
    for file in files:
        with _open(file) as f:
            mapping.update({_canonical(family, k): (file, k) for k in f.keys()})  # noqa: SIM118 (not a dict)
    return mapping


def _open(file: Path):
    if not file.exists():
        raise CheckpointError(f"{file}: listed in the checkpoint but missing")
    try:
        return safe_open(str(file), framework="numpy")
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"{file}: cannot be read as safetensors ({e})") from e


def read_config(path: str | os.PathLike):
    """(family, config dataclass) from ``path/config.json`` (``path`` may be remote: only this file is read)."""
    config_file = paths.as_path(path) / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{config_file} not found; expected a Hugging Face model directory")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file}: invalid JSON ({e})") from e
    if "model_type" not in raw:
        raise CheckpointError(f"{config_file}: no 'model_type' key")
    family = get_family(raw["model_type"])
    return family, family.config_cls.from_hf(raw)


def load_hf(
    path: str | os.PathLike,
    dtype: str | jnp.dtype = "float32",
    mesh: Mesh | None = None,
    rules: Mapping[str, MeshAxes] = DEFAULT_RULES,
):
    """Loads a HF directory (config.json + safetensors) into an NNX model; returns (model, config).

    With ``mesh``, each parameter is created directly in its shards (see `sharding.DEFAULT_RULES`). Missing,
    unexpected or wrongly shaped tensors raise `CheckpointError` naming them. A remote directory (``gs://…``) is
    copied to local temporary disk first (safetensors maps local files).
    """
    with paths.local_copy(path) as directory:
        return _load_local(Path(directory), dtype, mesh, rules)


def _load_local(directory: Path, dtype, mesh: Mesh | None, rules: Mapping[str, MeshAxes]):
    family, cfg = read_config(directory)
    dtype = jnp.dtype(dtype)
    abstract = nnx.eval_shape(lambda: family.model_cls(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    files = _tensor_files(family, directory)

    wanted = {path: checkpoint_names(family, path, variable) for path, variable in flat}
    names = {name for tensor_names, _ in wanted.values() for name in tensor_names}
    missing = sorted(names - set(files))
    unexpected = sorted(set(files) - names - ({"lm_head.weight"} if cfg.tie_word_embeddings else set()))
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing tensors {missing[:10]}" + (f" (+{len(missing) - 10} more)" * (len(missing) > 10)))
        if unexpected:
            problems.append(
                f"unexpected tensors {unexpected[:10]}" + (f" (+{len(unexpected) - 10} more)" * (len(unexpected) > 10))
            )
        raise CheckpointError(f"{directory}: {'; '.join(problems)} for {family.name} config {cfg}")

    handles: dict[Path, object] = {}

    def read(name: str, shape: tuple[int, ...], transposed: bool) -> np.ndarray:
        file, stored = files[name]
        if file not in handles:
            handles[file] = _open(file)
        found = tuple(handles[file].get_slice(stored).get_shape())
        expected = _hf_shape(family, cfg, name, shape, transposed)
        if found != expected:
            raise CheckpointError(f"{file}: tensor {stored!r} has shape {found}, expected {expected}")
        return _to_ours(handles[file].get_tensor(stored), shape, transposed).astype(dtype)

    loaded = []
    for param_path, variable in flat:
        tensor_names, transposed = wanted[param_path]
        tensors = [read(name, _layer_shape(variable), transposed) for name in tensor_names]
        host = np.stack(tensors) if _stacked(variable) else tensors[0]
        loaded.append((param_path, variable.replace(_place(host, variable, mesh, rules))))
    return nnx.merge(graphdef, nnx.from_flat_state(loaded)), cfg


def _place(host: np.ndarray, variable: nnx.Variable, mesh: Mesh | None, rules) -> jax.Array:
    if mesh is None:
        return jnp.asarray(host)
    sharding = NamedSharding(mesh, logical_to_spec(variable_axes(variable), host.shape, mesh, rules))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def save_hf(model: nnx.Module, cfg, out_dir: str | os.PathLike, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Writes ``model`` as a local HF directory (config.json + safetensors, sharded with an index when large);
    `staged_vlm_jax.train.export.export_hf` also writes to remote directories.

    Shards are gathered and written one file at a time, so host memory peaks at one shard. Under multi-host,
    every process must call this (the gather is collective); only process 0 writes.
    """
    out = Path(out_dir)
    family = get_family(cfg.model_type)
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    entries = []
    for param_path, variable in flat:
        tensor_names, transposed = checkpoint_names(family, param_path, variable)
        for layer, name in enumerate(tensor_names):
            hf_shape = _hf_shape(family, cfg, name, _layer_shape(variable), transposed)
            entries.append((name, transposed, variable, layer if _stacked(variable) else None, hf_shape))
    shards: list[list] = [[]]
    size = 0
    for entry in entries:
        nbytes = entry[2].nbytes // (entry[2].shape[0] if entry[3] is not None else 1)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    writer = jax.process_index() == 0
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    file_names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map, total = {}, 0
    for file_name, shard in zip(file_names, shards, strict=True):
        # Each parameter is gathered once per shard file (a stacked one holds several of the file's tensors).
        variables = {id(var): var for _, _, var, _, _ in shard}
        hosts = {key: to_host(var[...]) for key, var in variables.items()}
        tensors = {name: _to_hf(hosts[id(var)] if layer is None else hosts[id(var)][layer], shape, tr)
                   for name, tr, var, layer, shape in shard}  # fmt: skip
        total += sum(t.nbytes for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, file_name))
        if writer:
            save_file(tensors, str(out / file_name), metadata={"format": "pt"})
    if writer:
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
        config = cfg.to_hf()
        config["dtype"] = str(jnp.dtype(entries[0][2].dtype))
        (out / "config.json").write_text(json.dumps(config, indent=2))
    return out
