"""Statistics fixtures: the DMP test PKI and simulator (shared with tests/dmp and tests/flows)."""

from tests.dmp.conftest import jdv_dir, pki, simulator  # noqa: F401 (pytest fixtures)
