"""Where a run's files live: a local path or a remote URI (``gs://bucket/run``), through one path API.

A TPU pod's run directory is normally a bucket, so everything the package reads or writes (the workdir, its
checkpoints, metrics, TensorBoard events, plots and results, data files and their images, tokenizer directories)
goes through `etils.epath`, the path API Orbax and JAX's compilation cache already use. Remote paths need their
filesystem's plugins installed (for ``gs://``: ``pip install staged-vlm-jax[gcs]``, i.e. gcsfs and
google-cloud-storage); local paths behave as before. Libraries that only open local files (the HF tokenizer's
``save_pretrained`` / ``from_pretrained``) go through `local_copy` and `staged_output`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from etils import epath

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
    """Whether ``path`` is a URI (``gs://…``, ``s3://…``) rather than a local path."""
    return "://" in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
    """``path`` as an `epath.Path`: a local one made absolute (a run's recorded paths must not depend on the
    directory it was started from), a URI as it is."""
    path = epath.Path(path)
    return path if is_remote(path) else path.absolute()


def write_atomic(path: epath.Path, text: str) -> None:
    """Replaces ``path``'s content with ``text`` so that a kill leaves the old file or the new one, never half.

    Locally: a synced temporary file renamed over the target. On object stores an object appears whole when its
    upload completes, which gives the same guarantee; the rename there is a copy.
    """
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as file:
        file.write(text)
        if not is_remote(path):
            file.flush()
            os.fsync(file.fileno())
    tmp.replace(path)


def copy_tree(source: epath.Path, target: epath.Path) -> None:
    """Copies the directory ``source``'s files into ``target`` (created; existing files overwritten)."""
    target.mkdir(parents=True, exist_ok=True)
    for child in source.iterdir():
        if child.is_dir():
            copy_tree(child, target / child.name)
        else:
            child.copy(target / child.name, overwrite=True)


def move(source: epath.Path, target: epath.Path) -> None:
    """Moves the directory ``source`` to ``target`` (whose parent is created): a rename locally; on object
    stores, which have no directories to rename, a copy of every file and then the removal of ``source``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(source):
        copy_tree(source, target)
        source.rmtree()
    else:
        source.rename(target)


@contextlib.contextmanager
def local_copy(path: PathLike) -> Iterator[epath.Path]:
    """A local directory holding ``path``'s files: ``path`` itself when local, else a temporary download."""
    path = as_path(path)
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="staged_vlm_") as tmp:
        copy_tree(path, epath.Path(tmp))
        yield epath.Path(tmp)


@contextlib.contextmanager
def staged_output(path: PathLike) -> Iterator[epath.Path]:
    """A local directory to write ``path``'s files into: ``path`` itself when local, else a temporary directory
    uploaded to ``path`` when the block ends without an error."""
    path = as_path(path)
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="staged_vlm_") as tmp:
        yield epath.Path(tmp)
        copy_tree(epath.Path(tmp), path)
