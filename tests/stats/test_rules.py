"""The counting rules of the programme statistics (engine/stats): Paris months, the site rule,
identity statuses, what each outcome event counts for, and the integrator's statistics.yaml."""

from __future__ import annotations

import datetime as dt

import pytest

from engine.config.statistics import StatsSettingsError, load_settings
from engine.stats import event_measures, identity_change, message_measures, month_of, month_start, next_month
from engine.stats import sites
from engine.stats.facts import (
    DEST_DMP,
    DEST_PATIENT,
    DEST_PS,
    INVISIBLE_PATIENT,
    LPS,
    REPORT,
    MessageFacts,
    identity_category,
)
from engine.stats.months import months_between, parse_month
from engine.stats.outcomes import audience_summary, outcome_code
from engine.stats.report import StatsSettings, build_table

UTC = dt.timezone.utc


def utc(*args) -> float:
    return dt.datetime(*args, tzinfo=UTC).timestamp()


# -- months -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "instant, month",
    [
        # 1 November 00:00 in Paris is 23:00 UTC the day before (winter time since 25 October 2026)
        (utc(2026, 10, 31, 22, 59, 59), "2026-10"),
        (utc(2026, 10, 31, 23, 0, 0), "2026-11"),
        # the October change itself (03:00 CEST -> 02:00 CET, 01:00 UTC) stays in October
        (utc(2026, 10, 25, 0, 59, 59), "2026-10"),
        (utc(2026, 10, 25, 1, 0, 0), "2026-10"),
        # 1 October 00:00 in Paris is 22:00 UTC (summer time)
        (utc(2026, 9, 30, 21, 59, 59), "2026-09"),
        (utc(2026, 9, 30, 22, 0, 0), "2026-10"),
        # 1 April 00:00 in Paris is 22:00 UTC, after the March change (29 March 2026)
        (utc(2026, 3, 31, 21, 59, 59), "2026-03"),
        (utc(2026, 3, 31, 22, 0, 0), "2026-04"),
        # 1 March 00:00 in Paris is 23:00 UTC (still winter time); the change day stays in March
        (utc(2026, 2, 28, 22, 59, 59), "2026-02"),
        (utc(2026, 2, 28, 23, 0, 0), "2026-03"),
        (utc(2026, 3, 29, 1, 0, 0), "2026-03"),
        # New Year
        (utc(2026, 12, 31, 22, 59, 59) + 0.999, "2026-12"),
        (utc(2026, 12, 31, 23, 0, 0), "2027-01"),
    ],
)
def test_a_month_begins_at_midnight_in_paris_summer_and_winter(instant, month):
    assert month_of(instant) == month


def test_month_start_is_midnight_paris_and_next_month_follows():
    assert month_start("2026-11") == utc(2026, 10, 31, 23)
    assert month_start("2026-04") == utc(2026, 3, 31, 22)
    assert [next_month(m) for m in ("2026-01", "2026-12")] == ["2026-02", "2027-01"]
    assert months_between("2026-11", "2027-02") == ["2026-11", "2026-12", "2027-01", "2027-02"]
    for wrong in ("2026-13", "2026-1", "26-01", "2026/01", "", "2026-00"):
        with pytest.raises(ValueError, match="YYYY-MM"):
            parse_month(wrong)


# -- sites ------------------------------------------------------------------------------------


class Org:
    def __init__(self, id_type: str, value: str):
        self.id_type, self.id = id_type, value


@pytest.mark.parametrize(
    "organisation, msh4, cda, site, cda_read",
    [
        # 1. the sender organisation (PRT-8), any of its national forms (the ANS example pads it)
        (Org("FINEG", "300017985   "), "Organisation-Y", [], "FINESS:300017985", False),
        (Org("IDNST", "3300017985123"), "", [], "SIRET:300017985123", False),
        (Org("SIRET", "12345678901234"), "", [], "SIRET:12345678901234", False),
        (Org("IDNST", "410001234567801"), "", [], "RPPS-rang:10001234567801", False),
        # 2. MSH-4 with a national number in HD-2
        (None, "CHU-X^000897406^M", [("1.2.250.1.71.4.2.2", "1120456789")], "FINESS:000897406", False),
        (Org("", ""), "CHU-X^12345678901234^M", [], "SIRET:12345678901234", False),
        # 3. the CDA custodian (IDNST under the ANS structures OID), then the author organisation
        (None, "Organisation-Y", [("2.25.1", "x"), ("1.2.250.1.71.4.2.2", "1120456789")], "FINESS:120456789", True),
        # 4. MSH-4's local name, for statistics.yaml to map
        (None, "Organisation-Y", [("2.25.1", "x")], "MSH-4:Organisation-Y", True),
        (None, "", [], "", True),
    ],
)
def test_the_site_follows_the_documented_order_of_trust(organisation, msh4, cda, site, cda_read):
    asked = []
    assert sites.sender_site(organisation, msh4, lambda: asked.append(1) or cda) == site
    # the CDA is parsed only when neither PRT-8 nor MSH-4 names a national structure
    assert bool(asked) == cda_read


@pytest.mark.parametrize(
    "status, has_ins, category",
    [
        ("VALI", True, "qualified"),
        ("VALI", False, "validated"),
        ("QUAL", False, "qualified"),
        ("RECUP", True, "recovered"),
        ("PROV", True, "provisional"),
        ("VIDE", False, "unknown"),
        ("", False, "unknown"),
        ("WITHDRAWN", False, "unknown"),
    ],
)
def test_pid32_statuses_map_to_the_identity_referential(status, has_ins, category):
    assert identity_category(status, has_ins) == category


# -- outcomes ----------------------------------------------------------------------------------


def report(flags: int = 0, **kw) -> MessageFacts:
    return MessageFacts(
        **{
            "uid": "m1",
            "kind": REPORT,
            "month": "2026-10",
            "site": "FINESS:1",
            "doc_type": "CR-IMG",
            "flags": flags,
            **kw,
        }
    )


def test_a_report_counts_once_received_with_what_its_creator_asked():
    assert message_measures(report(DEST_DMP | DEST_PATIENT)) == ["received", "dmp_requested", "mss_patient_requested"]
    assert message_measures(report(0, kind=LPS)) == []


@pytest.mark.parametrize(
    "state, detail, flags, measures",
    [
        ("sent", "delivery 3: DMP accepted (success)", 0, ["dmp_ok"]),
        ("sent", "delivery 3: DMP accepted (partial)", INVISIBLE_PATIENT, ["dmp_ok_invisible"]),
        ("dead-letter", "delivery 3: DMPClosed: DMP fermé", 0, ["dmp_failed"]),
        ("dead-letter", "delivery 3: XDSUnknownPatientId: le patient n'a pas de DMP", 0, ["dmp_no_dmp"]),
        ("dead-letter", "delivery 3: PFI:PATIENT_OPPOSED: opposed", 0, ["dmp_failed"]),
        (
            "dead-letter",
            "delivery 3: gave up after 3 attempts: PFI:CONNECTION_REFUSED: DMP unreachable",
            0,
            ["dmp_failed"],
        ),
        ("cancelled", "delivery 3 cancelled: superseded by replace in message X", 0, ["dmp_not_sent"]),
    ],
)
def test_dmp_outcomes(state, detail, flags, measures):
    assert event_measures(state, detail, "dmp", report(flags)) == measures


def test_the_code_of_a_dead_letter_detail():
    assert outcome_code("delivery 12: gave up after 3 attempts: PFI:TIMEOUT: no answer") == "TIMEOUT"
    assert outcome_code("delivery 1: XDSUnknownPatientId: unknown") == "XDSUnknownPatientId"


@pytest.mark.parametrize(
    "state, detail, flags, measures",
    [
        (
            "sent",
            "delivery 4: MSSanté: 2 recipient(s) accepted, 1 refused (professionals: 2 accepted, 0 refused, "
            "0 not sent; patient: 0 accepted, 1 refused, 0 not sent)",
            DEST_PS | DEST_PATIENT,
            ["mss_ps_sent", "mss_patient_failed"],
        ),
        (
            "dead-letter",
            "delivery 4: 550: Mailbox unavailable (professionals: 0 accepted, 2 refused, 0 not sent)",
            DEST_PS,
            ["mss_ps_failed"],
        ),
        (
            "dead-letter",
            "delivery 4: PFI:NO_RECIPIENT: MASQUE_PS=Y (professionals: 0 accepted, 0 refused, 1 not sent)",
            DEST_PS,
            ["mss_ps_not_sent"],
        ),
        # a send that mailed nothing (waiting for the DMP, or already mailed) counts nothing
        (
            "sent",
            "delivery 4: MSSanté: deferred until the DMP accepts the document invisibly to the patient",
            DEST_PS,
            [],
        ),
        # no summary: every requested audience failed (retries exhausted) or was not sent (cancelled)
        (
            "dead-letter",
            "delivery 4: gave up after 5 attempts: 451: try later",
            DEST_PS | DEST_PATIENT,
            ["mss_ps_failed", "mss_patient_failed"],
        ),
        ("cancelled", "delivery 4 cancelled by alice: no", DEST_PATIENT, ["mss_patient_not_sent"]),
    ],
)
def test_mssante_outcomes_per_audience(state, detail, flags, measures):
    assert event_measures(state, detail, "mssante", report(flags)) == measures


def test_integration_into_the_ris_counts_by_its_ack():
    lps = report(kind=LPS)
    assert event_measures("sent", "to the RIS by the mailbox poller: AA from destination", "mllp-out", lps) == [
        "mss_in_integrated"
    ]
    assert event_measures("sent", "delivery 2: AE from destination: 902 patient inconnu", "mllp-out", lps) == [
        "mss_in_failed"
    ]
    assert event_measures("dead-letter", "delivery 2: AE from destination", "mllp-out", lps) == ["mss_in_failed"]
    # deliveries of a report to an MLLP peer (DRIMbox, ZAM to the creator) are not programme outcomes
    assert event_measures("sent", "delivery 2: AA from destination", "mllp-out", report()) == []


def test_an_identity_counts_once_per_cell_with_its_last_status():
    first = identity_change(None, ("provisional", "", ""))
    assert first == {"identities": 1, "identity_provisional": 1}
    later = identity_change(("provisional", "", ""), ("qualified", "IC", "INO"))
    assert later == {
        "identity_qualified": 1,
        "identity_provisional": -1,
        "consent_consultation": 1,
        "non_opposition_feeding": 1,
    }
    assert identity_change(("qualified", "IC", "INO"), ("qualified", "IC", "INO")) == {}


def test_audience_summary_verdicts():
    assert audience_summary("no summary") == {}
    assert audience_summary("(professionals: 1 accepted, 3 refused, 0 not sent)") == {"professionals": "sent"}


# -- the table ---------------------------------------------------------------------------------


def test_rows_sum_measures_compute_rates_and_apply_site_aliases():
    counters = [
        ("2026-10", "MSH-4:Organisation-Y", "CR-IMG", "identities", 4),
        ("2026-10", "MSH-4:Organisation-Y", "CR-IMG", "identity_qualified", 3),
        ("2026-10", "FINESS:300017985", "CR-IMG", "dmp_ok", 2),
        ("2026-10", "FINESS:300017985", "CR-IMG", "dmp_ok_invisible", 1),
        ("2026-10", "FINESS:999999999", "CR-IMG", "received", 7),
    ]
    settings = StatsSettings(
        sites={"MSH-4:Organisation-Y": "FINESS:300017985"}, ris_users_dmp={"FINESS:300017985": {"2026-10": 12}}
    )
    table = build_table(counters, "2026-10", "2026-10", "300017985", settings)
    [row] = table.rows
    assert (row["site"], row["identities"], row["identity_qualified"], row["identity_qualified_rate"]) == (
        "FINESS:300017985",
        4,
        3,
        75.0,
    )
    assert (row["dmp_succeeded"], row["dmp_succeeded_invisible"], row["ris_users_dmp"]) == (3, 1, 12)
    assert row["identity_provisional_rate"] == 0.0 and row["reports_received"] == 0
    # no identity: a rate is empty, not 0
    other = build_table(counters, "2026-10", "2026-10", "FINESS:999999999", StatsSettings()).rows[0]
    assert other["identity_qualified_rate"] is None and other["ris_users_dmp"] is None


def test_statistics_yaml_maps_names_and_order(tmp_path):
    path = tmp_path / "statistics.yaml"
    path.write_text(
        "columns:\n  - month: Mois\n  - site: FINESS\n  - dmp_succeeded: Nb CR alimentés DMP\n"
        "  - identity_qualified_rate\ncsv: {delimiter: ';', decimal: ','}\n"
        "ris_users_dmp:\n  'FINESS:1': 4\n",
        encoding="utf-8",
    )
    settings = load_settings(path)
    assert settings.columns == [
        ("month", "Mois"),
        ("site", "FINESS"),
        ("dmp_succeeded", "Nb CR alimentés DMP"),
        ("identity_qualified_rate", "identity_qualified_rate"),
    ]
    table = build_table(
        [
            ("2026-10", "FINESS:1", "CR-IMG", "identities", 3),
            ("2026-10", "FINESS:1", "CR-IMG", "identity_qualified", 2),
            ("2026-10", "FINESS:1", "CR-IMG", "dmp_ok", 5),
        ],
        "2026-10",
        "2026-10",
        None,
        settings,
    )
    assert table.as_csv() == "Mois;FINESS;Nb CR alimentés DMP;identity_qualified_rate\r\n2026-10;FINESS:1;5;66,7\r\n"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("columns:\n  - month\n  - nonsense\n", "3:5: unknown column 'nonsense'"),
        ("colums: []\n", "1:1: unknown key 'colums'"),
        ("ris_users_dmp:\n  'FINESS:1': {'2026-13': 3}\n", "is not a month"),
        ("csv: {delimiter: ';;'}\n", "one character"),
        ("columns: [month\n", "YAML syntax"),
    ],
)
def test_statistics_yaml_problems_name_file_line_and_column(tmp_path, text, problem):
    path = tmp_path / "statistics.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(StatsSettingsError) as caught:
        load_settings(path)
    assert any(problem in p and str(path) in p for p in caught.value.problems), caught.value.problems
