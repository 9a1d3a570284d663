"""The patient registry: identity, INS status, merges and DMP consent from PAM.fr ADT messages.

One SQLite file `patients.sqlite` in the data directory (WAL, synchronous=FULL: an applied update
survives a power cut). Thread-safety: one connection shared under a lock, so every method may be
called from any thread. Writes use one connection under one lock; `apply_in_thread` runs them on
the reactor's thread pool (a write waits for its fsync). Reads (`find`, `is_opposed`, `history`)
use a second connection under its own lock: in WAL mode they never wait for a writer, and each is
a few indexed queries, fine to call on the reactor thread.

Rules (see docs/patients.md):
* a patient is keyed by its IPP (value + assigning authority); after an A40 the old IPP keeps
  resolving to the surviving patient;
* consent: per field (ZFA-9 feeding, ZFA-11 consultation), the most recently *collected* value
  wins (ZFA-10 / ZFA-12 date), whatever the arrival order; `NA` (not collected) never replaces a
  collected answer;
* `is_opposed(ins)` is True when any patient with that INS (or the survivor it was merged into)
  has ZFA-9 = IO; an unknown INS is not opposed (default: feeding allowed).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

from twisted.internet import threads

from engine.errors import JournalError
from engine.journal import patients as tables
from engine.patients.model import (
    AdtUpdate,
    ConsentValue,
    HistoryEntry,
    InsId,
    MergeRecord,
    PatientId,
    PatientRecord,
)

FILE_NAME = "patients.sqlite"
_DB_ERRORS: tuple = (sqlite3.Error,)
try:
    import psycopg

    _DB_ERRORS = (sqlite3.Error, psycopg.Error)
except ImportError:  # pragma: no cover - psycopg is a dependency; keep the SQLite path importable
    pass
_CONSENT_FIELDS = ("feeding", "consultation")
#: identity_status answers besides PID-32 values: an A47 withdrew the INS; the IPP's patient has another INS
WITHDRAWN, OTHER_INS = "WITHDRAWN", "OTHER_INS"


class PatientRegistry:
    """Patients known from ADT messages; implements engine.dmp.gates.ConsentRegistry."""

    def __init__(self, data_dir: Path, clock: Callable[[], float] = time.time, reactor=None, url: str | None = None):
        """`url`: the shared PostgreSQL journal of a cluster, so that every node sees the consent
        the dispatch leader recorded (schema from `pfi db upgrade`); else a local SQLite file."""
        self.path = Path(data_dir) / FILE_NAME
        self.url = url
        self._clock = clock
        self._reactor = reactor
        self._lock = threading.Lock()  # guards the writer connection
        self._read_lock = threading.Lock()  # guards the reader connection
        try:
            self._db = self._connect()
            # WAL readers never wait for a writer's fsync: lookups on the reactor stay quick.
            self._reader = self._connect()
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"patient registry {self.url or self.path} cannot be opened: {exc}") from exc

    def _connect(self):
        if self.url:
            from engine.journal.postgres import connect

            return connect(self.url)
        return tables.open_sqlite(self.path)

    def close(self) -> None:
        """Close the database (further calls fail)."""
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()

    # -- writes ---------------------------------------------------------------------------
    def apply(self, update: AdtUpdate) -> PatientRecord:
        """Apply one ADT update in one transaction; return the surviving patient's record.

        Raises JournalError when SQLite fails (disk full, I/O): nothing of the update is kept.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                patient_id = self._apply(update)
                self._db.execute("COMMIT")
            except _DB_ERRORS as exc:
                self._rollback()
                # The journal's error: intake answers AE, the sender retries later.
                raise JournalError(f"patient registry write failed: {exc}") from exc
            except BaseException:
                self._rollback()
                raise
            return self._record(self._db, patient_id)

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except _DB_ERRORS:
            pass  # no transaction open, or the connection is gone

    def apply_in_thread(self, update: AdtUpdate):
        """`apply` on the reactor's thread pool: a Deferred firing with the PatientRecord."""
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), self.apply, update)

    def _apply(self, update: AdtUpdate) -> int:
        now = self._clock()
        patient_id, created = self._upsert_ipp(update.ipp, now)
        changes = {"created": "IPP"} if created else {}
        changes.update(self._apply_identity(patient_id, update))
        changes.update(self._apply_consent(patient_id, update.feeding, update.consultation))
        if update.merged_ipp is not None:
            changes.update(self._merge(patient_id, update, now))
        tables.update_patient(self._db, patient_id, {"updated_at": now})
        self._history(patient_id, update, changes, now)
        return patient_id

    def _upsert_ipp(self, ipp: PatientId, now: float) -> tuple[int, bool]:
        found = tables.by_ipp(self._db, ipp.value, ipp.domain)
        if found is not None:
            return found, False
        return tables.insert_patient(self._db, ipp.value, ipp.domain, ipp.authority, ipp.oid, now), True

    def _apply_identity(self, patient_id: int, update: AdtUpdate) -> dict[str, str | None]:
        """Identity fields follow the latest message: INS, PID-32 status and attributes, ZFA-1."""
        row = self._row(patient_id)
        new = {
            "ins": update.ins.value if update.ins else None,
            "ins_json": update.ins.model_dump_json() if update.ins else None,
            "identity_status": update.identity_status,
            "identity_attributes": json.dumps(update.identity_attributes),
        }
        if update.dmp_status is not None:
            # ZFA-1/2: the last known DMP state, not historised (PAM.fr).
            new["dmp_status"] = update.dmp_status.value
            new["dmp_status_date"] = update.dmp_status_date.isoformat() if update.dmp_status_date else None
        if update.ins is None and row["ins"] and not update.withdraw_ins:
            # PAM.fr: an identity without INS does not erase a known INS; only an A47 downgrade
            # (INS in MRG-1, none in PID-3) withdraws it.
            del new["ins"], new["ins_json"]
        if update.withdrawn_ins:
            new["withdrawn_ins"] = update.withdrawn_ins  # a report still carrying it must wait
        elif update.ins is not None and row["withdrawn_ins"] == update.ins.value:
            new["withdrawn_ins"] = None  # the same INS qualified again
        changed = {k: v for k, v in new.items() if row[k] != v}
        tables.update_patient(self._db, patient_id, changed)
        return {k: v for k, v in changed.items() if k != "ins_json"}

    def _apply_consent(
        self, patient_id: int, feeding: ConsentValue | None, consultation: ConsentValue | None
    ) -> dict[str, str | None]:
        row = self._row(patient_id)
        changes: dict[str, str | None] = {}
        for name, incoming in zip(_CONSENT_FIELDS, (feeding, consultation)):
            current = _consent(row[f"{name}_json"])
            if incoming is not None and _wins(incoming, current):
                tables.update_patient(self._db, patient_id, {f"{name}_json": incoming.model_dump_json()})
                changes[name] = _describe(incoming)
            elif incoming is not None:
                changes[f"{name}_ignored"] = f"{_describe(incoming)}: {_describe(current)} stands"
        return changes

    def _merge(self, survivor: int, update: AdtUpdate, now: float) -> dict[str, str | None]:
        """A40: the MRG-1 patient's INS (if the survivor has none) and consent move over."""
        old = tables.by_ipp(self._db, update.merged_ipp.value, update.merged_ipp.domain)
        if old is None:
            # Unknown old IPP: keep an empty, merged record so that the old IPP still resolves.
            old, _ = self._upsert_ipp(update.merged_ipp, now)
        elif old == survivor:
            return {}
        row, survivor_row = self._row(old), self._row(survivor)
        if row["ins"] and not survivor_row["ins"]:
            tables.update_patient(self._db, survivor, {"ins": row["ins"], "ins_json": row["ins_json"]})
        if row["dmp_status"] and not survivor_row["dmp_status"]:
            tables.update_patient(
                self._db, survivor, {"dmp_status": row["dmp_status"], "dmp_status_date": row["dmp_status_date"]}
            )
        moved = self._apply_consent(survivor, _consent(row["feeding_json"]), _consent(row["consultation_json"]))
        tables.move_merged(self._db, old, survivor, now, update.control_id)
        self._history(old, update, {"merged_into": f"patient {survivor}"}, now)
        return {
            "merged": f"IPP {update.merged_ipp.value}",
            **{f"merged_{k}": v for k, v in moved.items() if not k.endswith("_ignored")},
        }

    def _history(self, patient_id: int, update: AdtUpdate, changes: dict, now: float) -> None:
        tables.add_history(
            self._db, patient_id, now, update.control_id, update.event, json.dumps(changes, sort_keys=True)
        )

    # -- reads ----------------------------------------------------------------------------
    def find(self, identifier: str, domain: str | None = None) -> PatientRecord | None:
        """The surviving patient with this IPP (any authority, or `domain`) or INS; None if unknown."""
        with self._read_lock:
            patient_id = self._resolve(self._reader, identifier, domain)
            return self._record(self._reader, patient_id) if patient_id is not None else None

    def is_opposed(self, ins: str) -> bool:
        """ConsentRegistry: True when a patient with this INS is informed and opposed (ZFA-9 IO)."""
        with self._read_lock:
            # A merged record's INS counts for its survivor, which holds the merged consent.
            consents = tables.feeding_consents(self._reader, ins.strip())
        return any((c := _consent(text)) is not None and c.code == "IO" for text in consents)

    def identity_status(self, ins: str, ipp: str = "", ipp_domain: str = "") -> str | None:
        """What the PAM.fr feed says of the identity of the patient a report names: its PID-32
        status (VALI, PROV…), `WITHDRAWN` when an A47 took this INS away, `OTHER_INS` when the
        IPP's patient is qualified with another INS; None when the registry does not know.

        The IPP comes first: a PAM.fr sender leaves the INS out of an unqualified identity, so an
        INS-only look-up would miss exactly the patients that must wait. Then the INS."""
        ins = ins.strip()
        with self._read_lock:
            if ipp.strip():
                patient_id = tables.by_ipp(self._reader, ipp.strip(), ipp_domain.strip() or None)
                if patient_id is not None:
                    status = _status_for(self._row(patient_id, self._reader), ins)
                    if status:
                        return status
            status = tables.status_by_ins(self._reader, ins)
            if status is not None:
                return status or None
            withdrawn = tables.is_withdrawn(self._reader, ins)
        return WITHDRAWN if withdrawn else None

    def statistics_views(self, keys) -> dict[tuple[str, str, str], tuple[str, bool, str, str]]:
        """For the programme statistics (engine/stats): for each (INS, IPP, IPP domain) of `keys`,
        (PID-32 status, holds an INS with a valid key, ZFA-11 code, ZFA-9 code) of the surviving
        patient found by IPP (of that domain, or of any authority when it is ''), else by INS (a
        live record first, then the last updated); keys the registry does not know are left out.
        One query per 200 keys: routing asks it once for each batch of reports."""
        keys = [tuple(k.strip() for k in key) for key in keys]
        views: dict = {}
        for start in range(0, len(keys), 200):
            chunk = keys[start : start + 200]
            ipps = sorted({ipp for _, ipp, _ in chunk if ipp}) or [""]
            inss = sorted({ins for ins, _, _ in chunk if ins}) or [""]
            with self._read_lock:
                rows = tables.statistics_rows(self._reader, ipps, inss)
            for key in chunk:
                row = _statistics_match(rows, *key)
                if row is not None:
                    views[key] = _statistics_view(row)
        return views

    def history(self, identifier: str, domain: str | None = None) -> list[HistoryEntry]:
        """Every change of the patient and of the patients merged into it, oldest first."""
        with self._read_lock:
            patient_id = self._resolve(self._reader, identifier, domain)
            if patient_id is None:
                return []
            rows = tables.history_rows(self._reader, [patient_id] + tables.merged_ids(self._reader, patient_id))
        return [HistoryEntry(at=r[0], control_id=r[1], event=r[2], changes=json.loads(r[3])) for r in rows]

    # -- internals ------------------------------------------------------------------------
    @staticmethod
    def _resolve(db, identifier: str, domain: str | None) -> int | None:
        value = identifier.strip()
        found = tables.by_ipp(db, value, domain)
        return found if found is not None else tables.by_ins(db, value)

    def _row(self, patient_id: int, db=None) -> dict:
        return tables.row(db or self._db, patient_id)

    def _record(self, db: sqlite3.Connection, patient_id: int) -> PatientRecord:
        row = self._row(patient_id, db)
        merges = [
            MergeRecord(old_ipp=PatientId(value=m[0], authority=m[1], oid=m[2]), at=m[3], control_id=m[4])
            for m in tables.merges_into(db, patient_id)
        ]
        return PatientRecord(
            id=row["id"],
            ipp=PatientId(value=row["ipp"], authority=row["ipp_authority"], oid=row["ipp_oid"]),
            ins=InsId.model_validate_json(row["ins_json"]) if row["ins_json"] else None,
            identity_status=row["identity_status"],
            identity_attributes=json.loads(row["identity_attributes"] or "[]"),
            dmp_status=row["dmp_status"],
            dmp_status_date=row["dmp_status_date"],
            feeding=_consent(row["feeding_json"]),
            consultation=_consent(row["consultation_json"]),
            merges=merges,
            withdrawn_ins=row["withdrawn_ins"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


def _statistics_match(rows: list, ins: str, ipp: str, ipp_domain: str):
    """The row `identity_status` would pick: by IPP (first registered), else by INS."""
    by_ipp = sorted(
        (r for r in rows if ipp and r[1] == ipp and (not ipp_domain or r[2] == ipp_domain)), key=lambda r: r[0]
    )
    if by_ipp:
        return by_ipp[0]
    by_ins = sorted((r for r in rows if ins and r[3] == ins), key=lambda r: (bool(r[4]), -r[5]))
    return by_ins[0] if by_ins else None


def _statistics_view(row) -> tuple[str, bool, str, str]:
    status, ins_json, consultation, feeding = row[6:]
    has_ins = bool(ins_json) and bool(json.loads(ins_json).get("key_valid"))
    code = lambda text: (json.loads(text) or {}).get("code", "") if text else ""  # noqa: E731
    return status or "", has_ins, code(consultation), code(feeding)


def _status_for(row: dict, ins: str) -> str | None:
    """The identity status of a patient found by IPP, for a report carrying `ins`."""
    if row["withdrawn_ins"] == ins and row["ins"] != ins:
        return WITHDRAWN
    if row["ins"] and ins and row["ins"] != ins:
        return OTHER_INS
    return row["identity_status"] or None


def _consent(text: str | None) -> ConsentValue | None:
    return ConsentValue.model_validate_json(text) if text else None


def _wins(incoming: ConsentValue, current: ConsentValue | None) -> bool:
    """Does `incoming` replace `current`? Most recent collection date wins; ties go to arrival."""
    if current is None:
        return True
    if incoming.code == "NA":
        # "Not collected" says nothing about the patient's wish: it only fills an empty slot.
        return current.code == "NA"
    if current.code == "NA" or current.date is None:
        return True
    if incoming.date is None:
        return False
    return incoming.date >= current.date


def _describe(value: ConsentValue | None) -> str:
    if value is None:
        return "nothing"
    when = value.date.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value.date, datetime) else "no date"
    return f"{value.code} collected {when}"
