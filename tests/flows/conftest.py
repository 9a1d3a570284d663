"""Flow fixtures: the DMP test PKI and simulator (shared with tests/dmp)."""

from tests.dmp.conftest import jdv_dir, pki, simulator  # noqa: F401 (pytest fixtures)
