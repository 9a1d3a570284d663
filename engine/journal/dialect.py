"""What differs between the two journals' SQL, said once and explicitly (instead of probing the
connection): the journal modules write portable statements (`?` placeholders, as SQLite), the
PostgreSQL connection converts placeholders once per statement (engine/journal/postgres.py,
cached), and whatever else differs is an attribute here that the caller passes down."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dialect:
    name: str
    #: appended to a claim's SELECT: rows another node is claiming are skipped, not waited for
    lock_rows: str
    #: several engine nodes share this journal (leases, leadership and notifications matter)
    shared: bool
    #: open deliveries have indexes of their own (PostgreSQL's partial indexes): a query by state
    #: alone is bounded by them; SQLite's index leads with the destination, so its queries name
    #: each destination (engine/journal/deliveries.py, `_each_destination`)
    open_rows_indexed: bool


SQLITE = Dialect("sqlite", lock_rows="", shared=False, open_rows_indexed=False)
POSTGRES = Dialect("postgresql", lock_rows=" FOR UPDATE SKIP LOCKED", shared=True, open_rows_indexed=True)
