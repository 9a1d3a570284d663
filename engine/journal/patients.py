"""The patient registry's tables (patients, merges, history): every statement the registry runs,
on a SQLite connection (the `patients.sqlite` file of the data directory) or on the shared
PostgreSQL journal (PgConnection: the same `?` statements). The rules live in
engine/patients/registry.py; this module only reads and writes rows.

SQLite: the file's schema is numbered like the journal's (PATIENT_MIGRATIONS, recorded in its
own schema_version table); PostgreSQL: journal migrations 3 and 4 (engine/journal/pgschema.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

#: (number, statements) for the SQLite patients file. Files written before the numbering hold the
#: tables of 1 and possibly the column of 2: both steps are written to be re-runnable.
PATIENT_MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
CREATE TABLE IF NOT EXISTS patients (
    id INTEGER PRIMARY KEY,
    ipp TEXT NOT NULL, ipp_domain TEXT NOT NULL, ipp_authority TEXT NOT NULL, ipp_oid TEXT NOT NULL,
    ins TEXT, ins_json TEXT, identity_status TEXT NOT NULL DEFAULT '', identity_attributes TEXT NOT NULL DEFAULT '[]',
    dmp_status TEXT NOT NULL DEFAULT '', dmp_status_date TEXT,
    feeding_json TEXT, consultation_json TEXT,
    merged_into INTEGER REFERENCES patients(id),
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    UNIQUE (ipp, ipp_domain)
);
CREATE INDEX IF NOT EXISTS patients_ins ON patients (ins);
CREATE TABLE IF NOT EXISTS merges (
    survivor_id INTEGER NOT NULL REFERENCES patients(id), old_id INTEGER NOT NULL REFERENCES patients(id),
    at REAL NOT NULL, control_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY, patient_id INTEGER NOT NULL REFERENCES patients(id),
    at REAL NOT NULL, control_id TEXT NOT NULL, event TEXT NOT NULL, changes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_patient ON history (patient_id);
""",
    ),
    # The INS an A47 withdrew from a downgraded identity: a report still carrying it must wait.
    (2, "withdrawn_ins"),
]


def open_sqlite(path: Path) -> sqlite3.Connection:
    """The SQLite patients file, created or upgraded to the latest numbered schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    version = db.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
    for number, sql in PATIENT_MIGRATIONS:
        if number > version:
            db.execute("BEGIN IMMEDIATE")
            _add_withdrawn_ins(db) if sql == "withdrawn_ins" else _run_script(db, sql)
            db.execute("INSERT INTO schema_version VALUES (?)", (number,))
            db.execute("COMMIT")
    return db


def _run_script(db: sqlite3.Connection, sql: str) -> None:
    for statement in filter(str.strip, sql.split(";")):
        db.execute(statement)


def _add_withdrawn_ins(db: sqlite3.Connection) -> None:
    if "withdrawn_ins" not in {row[1] for row in db.execute("PRAGMA table_info(patients)")}:
        db.execute("ALTER TABLE patients ADD COLUMN withdrawn_ins TEXT")
    db.execute(
        "CREATE INDEX IF NOT EXISTS patients_withdrawn_ins ON patients (withdrawn_ins) WHERE withdrawn_ins IS NOT NULL"
    )


# -- writes --------------------------------------------------------------------------------


def insert_patient(db, value: str, domain: str, authority: str, oid: str, now: float) -> int:
    rows = db.execute(
        "INSERT INTO patients (ipp, ipp_domain, ipp_authority, ipp_oid, created_at, updated_at)"
        " VALUES (?,?,?,?,?,?) RETURNING id",
        (value, domain, authority, oid, now, now),
    ).fetchall()
    return rows[0][0]


#: the columns `update_patient` may set (names are never taken from input)
UPDATABLE = frozenset(
    {
        "ins",
        "ins_json",
        "identity_status",
        "identity_attributes",
        "dmp_status",
        "dmp_status_date",
        "feeding_json",
        "consultation_json",
        "withdrawn_ins",
        "merged_into",
        "updated_at",
    }
)


def update_patient(db, patient_id: int, changes: dict) -> None:
    if not changes:
        return
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise ValueError(f"not a patient column: {sorted(unknown)}")
    assignments = ", ".join(f"{k}=?" for k in changes)
    db.execute(f"UPDATE patients SET {assignments} WHERE id=?", (*changes.values(), patient_id))


def move_merged(db, old: int, survivor: int, now: float, control_id: str) -> None:
    """A40: `old` and the patients merged into it now resolve to `survivor`."""
    db.execute("UPDATE patients SET merged_into=?, updated_at=? WHERE id=?", (survivor, now, old))
    db.execute("UPDATE patients SET merged_into=? WHERE merged_into=?", (survivor, old))
    db.execute("INSERT INTO merges VALUES (?,?,?,?)", (survivor, old, now, control_id))


def add_history(db, patient_id: int, now: float, control_id: str, event: str, changes_json: str) -> None:
    db.execute(
        "INSERT INTO history (patient_id, at, control_id, event, changes) VALUES (?,?,?,?,?)",
        (patient_id, now, control_id, event, changes_json),
    )


# -- reads ---------------------------------------------------------------------------------


def row(db, patient_id: int) -> dict:
    cursor = db.execute("SELECT * FROM patients WHERE id=?", (patient_id,))
    names = [d[0] for d in cursor.description]
    return dict(zip(names, cursor.fetchone()))


def live_id(found) -> int | None:
    """The surviving patient of an (id, merged_into) row."""
    if found is None:
        return None
    return found[1] if found[1] is not None else found[0]


def by_ipp(db, value: str, domain: str | None) -> int | None:
    """The surviving patient of this IPP (of `domain`, or of any authority, oldest first)."""
    query, params = "SELECT id, merged_into FROM patients WHERE ipp=?", [value]
    if domain is not None:
        query, params = query + " AND ipp_domain=?", [value, domain]
    return live_id(db.execute(query + " ORDER BY id LIMIT 1", params).fetchone())


def by_ins(db, ins: str) -> int | None:
    """The surviving patient with this INS (unmerged and most recently updated first)."""
    return live_id(
        db.execute(
            "SELECT id, merged_into FROM patients WHERE ins=? "
            "ORDER BY merged_into IS NOT NULL, updated_at DESC LIMIT 1",
            (ins,),
        ).fetchone()
    )


def feeding_consents(db, ins: str) -> list[str | None]:
    """The feeding consent (JSON) of the survivors of every patient with this INS."""
    return [
        r[0]
        for r in db.execute(
            "SELECT s.feeding_json FROM patients p JOIN patients s "
            "ON s.id = COALESCE(p.merged_into, p.id) WHERE p.ins=?",
            (ins,),
        ).fetchall()
    ]


def status_by_ins(db, ins: str) -> str | None:
    """The PID-32 status of the latest survivor of a patient with this INS; None if none."""
    found = db.execute(
        "SELECT s.identity_status FROM patients p JOIN patients s "
        "ON s.id = COALESCE(p.merged_into, p.id) WHERE p.ins=? ORDER BY s.updated_at DESC LIMIT 1",
        (ins,),
    ).fetchone()
    return None if found is None else found[0]


def is_withdrawn(db, ins: str) -> bool:
    return db.execute("SELECT 1 FROM patients WHERE withdrawn_ins=? LIMIT 1", (ins,)).fetchone() is not None


def merged_ids(db, patient_id: int) -> list[int]:
    return [r[0] for r in db.execute("SELECT id FROM patients WHERE merged_into=?", (patient_id,))]


def history_rows(db, ids: list[int]) -> list[tuple]:
    marks = ",".join("?" * len(ids))
    return db.execute(
        f"SELECT at, control_id, event, changes FROM history WHERE patient_id IN ({marks}) ORDER BY at, id", ids
    ).fetchall()


def merges_into(db, survivor: int) -> list[tuple]:
    """(old ipp, authority, oid, at, control_id) of the patients merged into `survivor`."""
    return db.execute(
        "SELECT p.ipp, p.ipp_authority, p.ipp_oid, m.at, m.control_id FROM merges m "
        "JOIN patients p ON p.id = m.old_id WHERE m.survivor_id=? ORDER BY m.at",
        (survivor,),
    ).fetchall()


def statistics_rows(db, ipps: list[str], inss: list[str]) -> list[tuple]:
    """(id, ipp, ipp_domain, ins, merged, survivor's updated_at, status, ins_json, consultation_json,
    feeding_json) of the patients with one of these IPPs or INS, with their survivor's identity and
    consent: the programme statistics' one query for a batch of reports (engine/patients/registry.py
    `statistics_views` picks each report's row)."""
    ipps, inss = ipps or [""], inss or [""]
    return db.execute(
        "SELECT p.id, p.ipp, p.ipp_domain, p.ins, p.merged_into IS NOT NULL, s.updated_at,"
        " s.identity_status, s.ins_json, s.consultation_json, s.feeding_json FROM patients p"
        " JOIN patients s ON s.id = COALESCE(p.merged_into, p.id)"
        f" WHERE p.ipp IN ({','.join('?' * len(ipps))}) OR p.ins IN ({','.join('?' * len(inss))})",
        (*ipps, *inss),
    ).fetchall()
