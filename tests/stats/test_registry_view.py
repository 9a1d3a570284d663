"""What the statistics ask the PAM.fr registry (one query per batch of reports), on both stores:
the identity status and consent of each report's patient, found by IPP first, then by INS."""

from __future__ import annotations

from engine.hl7 import Message
from engine.patients import read_adt
from tests.patients.messages import OTHER_INS, TEST_INS, adt
from tests.patients.test_registry import registry  # noqa: F401 (the fixture: SQLite file and PostgreSQL)

DOMAIN = "000897406"  # CX-4.2 of the messages' IPP authority CHU-X


def apply(registry, raw: bytes) -> None:
    registry.apply(read_adt(Message.parse(raw)))


def test_views_follow_the_gates_look_up_order(registry):  # noqa: F811
    apply(registry, adt(ipp="900001", ins=TEST_INS, status="VALI", feeding="INO", consult="IC"))
    apply(registry, adt(control="2", ipp="900002", ins=None, status="PROV", feeding="IO", consult="INC"))
    apply(registry, adt(control="3", ipp="900003", ins=OTHER_INS, status="VALI"))
    apply(registry, adt("A40", control="4", ipp="900001", ins=TEST_INS, mrg_ipp="900003", zfa=False))
    keys = [
        (TEST_INS, "900001", DOMAIN),  # by IPP
        (TEST_INS, "900001", "ELSEWHERE"),  # another authority's IPP: by INS
        ("", "900002", ""),  # by IPP, any authority; not qualified, no INS
        ("", "900003", DOMAIN),  # merged into 900001: the survivor answers
        ("123", "999999", DOMAIN),
    ]  # unknown
    views = registry.statistics_views(keys)
    assert views == {
        keys[0]: ("VALI", True, "IC", "INO"),
        keys[1]: ("VALI", True, "IC", "INO"),
        keys[2]: ("PROV", False, "INC", "IO"),
        keys[3]: ("VALI", True, "IC", "INO"),
    }
