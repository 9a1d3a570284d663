"""Patient registry fed by PAM.fr ADT messages: IPP, INS and its status, A40 merges, DMP consent.

update = read_adt(Message.parse(raw))      # AdtError (coded) if it cannot be applied
registry = PatientRegistry(data_dir)       # data_dir/patients.sqlite
record = registry.apply(update)
registry.is_opposed(ins)                   # engine.dmp.gates.ConsentRegistry
record = await update_from_message(registry, raw)   # the routing step's hook
"""

from engine.patients.adt import SUPPORTED_EVENTS, AdtError, read_adt
from engine.patients.hook import update_from_message
from engine.patients.model import (
    AdtUpdate,
    ConsentValue,
    Consultation,
    DmpStatus,
    Feeding,
    HistoryEntry,
    InsId,
    MergeRecord,
    PatientId,
    PatientRecord,
)
from engine.patients.registry import PatientRegistry

__all__ = [
    "AdtError",
    "AdtUpdate",
    "ConsentValue",
    "Consultation",
    "DmpStatus",
    "Feeding",
    "HistoryEntry",
    "InsId",
    "MergeRecord",
    "PatientId",
    "PatientRecord",
    "PatientRegistry",
    "SUPPORTED_EVENTS",
    "read_adt",
    "update_from_message",
]
