"""Command line entry point: ``staged-vlm <command>`` (also ``python -m staged_vlm_jax``).

Commands register in `COMMANDS` (name -> (help, add_arguments, run)); later issues add train / eval / export /
plot / data here.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="local Hugging Face model directory")
    parser.add_argument("--dtype", default="bfloat16", help="parameter dtype to load with (default bfloat16)")
    parser.add_argument("--mesh", default=None, help='optional mesh as JSON, e.g. \'{"fsdp": 4, "tensor": 2}\'')


def _inspect(args: argparse.Namespace) -> int:
    """Loads a checkpoint (sharded when --mesh is given) and prints its family, config and parameter counts."""
    from flax import nnx

    from staged_vlm_jax import models
    from staged_vlm_jax.models.sharding import make_mesh

    mesh = make_mesh(json.loads(args.mesh)) if args.mesh else None
    model, cfg = models.load_hf(args.model, dtype=args.dtype, mesh=mesh)
    counts: dict[str, int] = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        counts[str(path[0])] = counts.get(str(path[0]), 0) + math.prod(variable.shape)
    print(f"model_type: {cfg.model_type}")
    print(f"config: {cfg}")
    for name, count in counts.items():
        print(f"parameters/{name}: {count:,}")
    print(f"parameters/total: {sum(counts.values()):,}")
    if mesh is not None:
        print(f"mesh: {dict(mesh.shape)}")
    return 0


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    from staged_vlm_jax.data.schema import CAPABILITIES, ON_ERROR_POLICIES

    commands = parser.add_subparsers(dest="data_command", required=True)
    convert = commands.add_parser("convert", help="EasyR1-schema rows + images -> TFDS-layout array_record directory")
    convert.add_argument("--input", required=True, help="rows file (.jsonl, .json, .parquet, .tsv)")
    convert.add_argument("--capability", required=True, choices=CAPABILITIES, help="the rows' capability (stage)")
    convert.add_argument("--image-root", default=None, help="root of relative image paths (default: input folder)")
    convert.add_argument("--out", required=True, help="new (or empty) output directory")
    convert.add_argument("--on-error", default="raise", choices=sorted(ON_ERROR_POLICIES), help="for bad rows")
    convert.add_argument("--shard-size", type=int, default=1024, help="records per array_record shard")
    convert.set_defaults(data_run=_data_convert)


def _data_convert(args: argparse.Namespace) -> int:
    """Reads, validates (images decoded once) and writes the rows; prints rows written and skipped with reasons."""
    from staged_vlm_jax.data.array_record import shard_paths, write_array_record
    from staged_vlm_jax.data.schema import SkipCounter
    from staged_vlm_jax.data.sources import read_rows

    skipped = SkipCounter()
    rows = read_rows(
        args.input, capability=args.capability, image_root=args.image_root, on_error=args.on_error, skipped=skipped
    )
    out = write_array_record(rows, args.out, shard_size=args.shard_size)
    written = skipped.rows_seen - skipped.total
    print(f"wrote {written} rows to {out} ({len(shard_paths(out))} shard(s)); {skipped.summary()}")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "inspect": (
        "load a Hugging Face checkpoint and print its config and parameter counts",
        _inspect_arguments,
        _inspect,
    ),
    "data": (
        "data set tools: `data convert` writes rows and their images as TFDS-layout array_record shards",
        _data_arguments,
        lambda args: args.data_run(args),
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="staged-vlm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
