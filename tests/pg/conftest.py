"""PostgreSQL fixtures (`pg_url`, `pg_empty_url`) live in tests/conftest.py, shared with other suites."""
