"""JAX's persistent compilation cache, for every command that compiles: `train`, `eval` and `serve`.

A 7–8 B model's rollout and learner programs take minutes each to compile. Cached, a rerun, a resume, a second
evaluation of another checkpoint of the same architecture or a restarted server loads them in seconds: XLA keys
each entry on the program and the compiler, so one directory serves any number of runs, checkpoints and models,
and a stale entry is never used. A run keeps its cache in its workdir (``config.compilation_cache``); `eval` and
`serve` share `DEFAULT` unless told otherwise (``--compilation-cache``; empty: off). A ``gs://`` directory works
as any other (JAX writes it through etils.epath).
"""

from __future__ import annotations

import os

import jax

from staged_vlm_jax.paths import is_remote

DEFAULT = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "staged_vlm_jax", "jax_cache")


def enable(directory: str | os.PathLike | None) -> None:
    """Compiled programs are read from and written to ``directory`` from now on (nothing changes for an empty
    one or None). Only programs that took a second or more to compile are written (JAX's default): the real
    models' all do, and a tiny test program is not worth a file."""
    if directory:
        directory = os.fspath(directory)
        local = not is_remote(directory)
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory) if local else directory)
