"""Installs the fake GCS (tests/fake_gcs.py) in every Python process started with this folder on PYTHONPATH."""

import os

if os.environ.get("FAKE_GCS_ROOT"):
    from tests.fake_gcs import install

    install(os.environ["FAKE_GCS_ROOT"])
