"""Logical axis names -> mesh shardings, and mesh construction.

Every parameter carries ``logical_axes`` (e.g. ``("embed", "mlp")``). A rules table maps each logical name to
mesh axes among ``data``, ``fsdp`` and ``tensor``; the same model code then runs on one CPU, a fake 8-device CPU
mesh, a GPU, or a pod slice, and only the rules/mesh change. A dimension that a mesh axis does not divide is
replicated rather than rejected, so tiny test models and odd head counts still place.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = str | tuple[str, ...] | None

# Parameters are fully sharded over `fsdp` on their model dimension and split over `tensor` Megatron-style
# (heads, MLP hidden, vocab); activations' batch runs over data x fsdp.
DEFAULT_RULES: dict[str, MeshAxes] = {
    "batch": ("data", "fsdp"),
    "layers": None,  # the stacked-layer axis: every device holds its share of every layer
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "norm": None,
    "vision_patch": None,
    "vision_embed": "fsdp",
    "vision_qkv": None,
    "vision_heads": "tensor",
    "vision_mlp": "tensor",
    "vision_merged": "fsdp",
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape; one axis may be -1 (all remaining devices)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


def make_mesh(config: MeshConfig | Mapping[str, int] | None = None, devices: Sequence | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types (GSPMD propagation through un-annotated ops)."""
    if config is None:
        config = MeshConfig()
    elif isinstance(config, Mapping):
        unknown = set(config) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected a subset of {MESH_AXES}")
        config = MeshConfig(**config)
    devices = list(devices if devices is not None else jax.devices())
    sizes = [config.data, config.fsdp, config.tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {config}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {config}: {len(devices)} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {config} needs {math.prod(sizes)} devices, but {len(devices)} are available")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(
    axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Mapping[str, MeshAxes] = DEFAULT_RULES,
) -> PartitionSpec:
    """PartitionSpec for one array; each mesh axis is used at most once, non-dividing axes are dropped."""
    used: set[str] = set()
    spec = []
    for name, dim in zip(axes, shape, strict=True):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise KeyError(f"no sharding rule for logical axis {name!r}; rules cover {sorted(rules)}")
        target = rules[name]
        target = () if target is None else (target,) if isinstance(target, str) else tuple(target)
        chosen = tuple(a for a in target if a not in used and mesh.shape[a] > 1)
        if chosen and dim % math.prod(mesh.shape[a] for a in chosen) == 0:
            used.update(chosen)
            spec.append(chosen[0] if len(chosen) == 1 else chosen)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def variable_axes(variable: nnx.Variable) -> tuple[str | None, ...]:
    axes = variable.get_metadata().get("logical_axes")
    if axes is None:
        raise ValueError(f"parameter of shape {variable.shape} has no logical_axes metadata")
    return axes


def state_shardings(state, mesh: Mesh, rules: Mapping[str, MeshAxes] = DEFAULT_RULES):
    """A pytree (same structure as ``state``) of NamedShardings derived from each parameter's logical axes."""
    return jax.tree.map(
        lambda v: NamedSharding(mesh, logical_to_spec(variable_axes(v), v.shape, mesh, rules)),
        state,
        is_leaf=_is_variable,
    )


def abstract(tree, shardings):
    """``tree``'s array leaves as shape/dtype structs placed by ``shardings`` (one per leaf in order, or a tree
    with one sharding per leaf): a target for ahead-of-time lowering or for restoring into, allocating nothing."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten([jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                              for x, s in zip(leaves, jax.tree.leaves(shardings), strict=True)])  # fmt: skip


def shard_model(model: nnx.Module, mesh: Mesh, rules: Mapping[str, MeshAxes] = DEFAULT_RULES) -> nnx.Module:
    """Moves a model's parameters onto ``mesh`` according to ``rules`` (in place) and returns it."""
    state = nnx.state(model)
    shardings = state_shardings(state, mesh, rules)
    values = jax.tree.map(lambda v: v[...], state, is_leaf=_is_variable)
    placed = jax.device_put(values, shardings)
    nnx.update(model, placed)
    return model


_ACTIVE_RULES: contextvars.ContextVar[Mapping[str, MeshAxes]] = contextvars.ContextVar("rules", default=DEFAULT_RULES)


@contextlib.contextmanager
def axis_rules(rules: Mapping[str, MeshAxes]):
    """The rules `constrain` applies while tracing inside this context (as Flax's ``logical_axis_rules``).

    The learner and the rollout engine trace their programs under their own rules, so a model's activation
    constraints follow whatever rules the run was configured with, and model code never names a rules table.
    """
    token = _ACTIVE_RULES.set(rules)
    try:
        yield rules
    finally:
        _ACTIVE_RULES.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None], rules: Mapping[str, MeshAxes] | None = None) -> jax.Array:
    """Pins an activation's sharding by logical axes when traced under ``jax.set_mesh`` with our mesh axes.

    ``rules`` default to the active `axis_rules`. Without the constraint GSPMD may keep the batch on ``data`` only
    and replicate it over ``fsdp``; outside a mesh context (single device, eager use) it is a no-op, so the models
    stay mesh-agnostic.
    """
    mesh = _traced_mesh()
    if mesh is None:
        return x
    rules = _ACTIVE_RULES.get() if rules is None else rules
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh, rules))


def _traced_mesh():
    """The mesh of the program being traced, when it is one with our axes (``jax.set_mesh``); None otherwise."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names) else mesh


def active_batch_shards() -> int:
    """How many ways `constrain` splits the batch axis in the program being traced: the active mesh's batch
    shards under the active `axis_rules` (1 outside a mesh context)."""
    return batch_shards(_traced_mesh(), _ACTIVE_RULES.get())


def batch_sharding(mesh: Mesh, ndim: int, rules: Mapping[str, MeshAxes] = DEFAULT_RULES) -> NamedSharding:
    """Sharding of an activation/input whose leading axis is the batch."""
    return NamedSharding(mesh, PartitionSpec(rules["batch"], *([None] * (ndim - 1))))


def batch_shards(mesh: Mesh | None, rules: Mapping[str, MeshAxes] = DEFAULT_RULES) -> int:
    """How many ways the batch axis is split (a global batch must be a multiple of it); 1 without a mesh."""
    if mesh is None:
        return 1
    axes = rules["batch"]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[a] for a in axes)


def shard_batch(mesh: Mesh, *arrays, rules: Mapping[str, MeshAxes] = DEFAULT_RULES):
    """Places host arrays batch-sharded on ``mesh`` (None passes through)."""
    return tuple(None if a is None else place(np.asarray(a), batch_sharding(mesh, np.ndim(a), rules)) for a in arrays)


# -- several processes (multi-host) ---------------------------------------------------------------------------------
# The training loop runs the same host logic in every process on the same global batch (data order, rewards,
# advantages); only device placement is per process: each process fills its own devices' shards of a global array.


def place(tree, sharding):
    """Host or device arrays placed with ``sharding`` (one sharding for every leaf, or a tree of them).

    One process: ``jax.device_put``. Several: host values, the same in every process, become global arrays whose
    shards each process fills from its own copy (``jax.make_array_from_callback``); arrays already spread over the
    processes are resharded.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    leaves, treedef = jax.tree.flatten(tree)
    single = isinstance(sharding, jax.sharding.Sharding)
    targets = [sharding] * len(leaves) if single else jax.tree.leaves(sharding)  # one per array leaf, in order

    def one(x, target):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, target)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, target, lambda index: host[index])

    return treedef.unflatten([one(x, target) for x, target in zip(leaves, targets, strict=True)])


def to_host(tree):
    """Whole numpy copies of a tree's arrays in every process: arrays spread over several processes' devices are
    gathered (every process must call this at the same point)."""

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def same_in_every_process(tree):
    """Process 0's values of a host tree in every process (e.g. rewards, which a timeout could make differ)."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return multihost_utils.broadcast_one_to_all(tree)


def barrier(name: str) -> None:
    """Waits until every process reaches this point (a no-op in one process), e.g. after process 0 wrote files."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
