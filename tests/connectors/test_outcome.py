"""The structured delivery outcome: what the journal shows and what a failure ZAM carries."""

from engine.connectors.base import DELIVERY_FAILED, Action, Outcome, refused


def test_remote_code_is_kept_for_the_zam():
    outcome = refused("DMPClosed", "DMP fermé", local=False)
    assert outcome.action is Action.DEAD
    assert outcome.reason == "DMPClosed: DMP fermé"
    assert outcome.error() == ("DMPClosed", "DMP fermé", False)


def test_pfi_refusal_is_marked_local():
    outcome = Outcome("wait-identity", "INS not qualified", "INS_NOT_QUALIFIED", local=True)
    assert outcome.action is Action.WAIT_IDENTITY  # a plain string is coerced to the enum
    assert outcome.reason == "PFI:INS_NOT_QUALIFIED: INS not qualified"
    assert outcome.error() == ("INS_NOT_QUALIFIED", "INS not qualified", True)


def test_exhausted_retries_keep_the_last_code():
    outcome = Outcome(Action.RETRY, "no answer", "TIMEOUT").gave_up(12)
    assert outcome.action is Action.DEAD
    assert outcome.reason == "gave up after 12 attempts: TIMEOUT: no answer"
    assert outcome.error() == ("TIMEOUT", "no answer (gave up after 12 attempts)", False)


def test_failure_without_a_code_is_the_pfis_delivery_failed():
    outcome = Outcome(Action.DEAD, "connection lost to peer " + "x" * 300)
    code, label, local = outcome.error()
    assert (code, local) == (DELIVERY_FAILED, True)
    assert label.startswith("connection lost to peer") and len(label) == 200
