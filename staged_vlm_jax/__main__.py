"""``python -m staged_vlm_jax`` runs the ``staged-vlm`` command line."""

import sys

from staged_vlm_jax.cli import main

sys.exit(main())
