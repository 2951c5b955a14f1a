"""A local stand-in for Google Cloud Storage, for testing ``gs://`` workdirs without a network.

`install(root)` makes ``gs://BUCKET/PATH`` mean the local directory ``root/BUCKET/PATH`` for the three layers
that reach GCS: fsspec's ``gs`` protocol (used by `etils.epath` and TensorBoard's filesystem layer), Orbax's
TensorStore key-value spec, and Orbax's two Python-side calls to the GCS client (hierarchical-namespace lookup,
recursive delete). Everything above those layers, including Orbax's GCS code paths (commit-success files
instead of renames), runs unchanged. A path the code under test wrote with `pathlib` or `open` instead would land
in the working directory as a ``gs:`` folder, not under ``root``.

Subprocesses get it through ``tests/fake_gcs_site/sitecustomize.py`` with ``FAKE_GCS_ROOT`` set.
"""

from __future__ import annotations

import os
import shutil

import fsspec
from fsspec.implementations.local import LocalFileSystem
from orbax.checkpoint._src.path import gcs_utils
from orbax.checkpoint._src.serialization import tensorstore_utils

_PREFIX = "gs://"
_root: str | None = None


def _local(path: str) -> str:
    """``gs://bucket/x`` -> ``root/bucket/x``; anything else unchanged."""
    path = os.fspath(path)
    return os.path.join(_root, path[len(_PREFIX) :]) if path.startswith(_PREFIX) else path


class FakeGCSFileSystem(LocalFileSystem):
    """fsspec's local filesystem answering for ``gs://``, listing paths the way gcsfs does (``bucket/x``)."""

    protocol = ("gs", "gcs")

    def __init__(self, *args, finalize_on_close: bool = True, **kwargs) -> None:
        del finalize_on_close  # a gcsfs option (epath passes it)
        super().__init__(*args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(_local(path))

    def glob(self, path, **kwargs):
        return [p.removeprefix(_root + "/") for p in super().glob(path, **kwargs)]


def install(root: str | os.PathLike) -> None:
    """Routes ``gs://`` to ``root`` in this process (idempotent; the last root wins)."""
    global _root
    _root = os.path.abspath(root)
    for protocol in FakeGCSFileSystem.protocol:
        fsspec.register_implementation(protocol, FakeGCSFileSystem, clobber=True)
    if not getattr(tensorstore_utils._normalize_path, "fake_gcs", False):
        normalize = tensorstore_utils._normalize_path

        def local_normalize(path: str) -> str:
            return normalize(_local(path))

        local_normalize.fake_gcs = True
        tensorstore_utils._normalize_path = local_normalize
    gcs_utils.is_hierarchical_namespace_enabled = lambda path: False
    gcs_utils.rmtree = lambda path, missing_ok=False: shutil.rmtree(_local(str(path)), ignore_errors=missing_ok)
