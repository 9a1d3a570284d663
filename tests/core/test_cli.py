"""The pfi command line, run as a real process: check, send, run + SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.pki import generate_test_pki
from tests.conftest import ANS
from tests.support import ROOT, EngineProcess, inbound, sample_adt, write_config


def pfi(*args, cwd=ROOT, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env
    )


def test_check_reports_every_error_with_file_line_col(tmp_path):
    (tmp_path / "channels").mkdir()
    (tmp_path / "channels" / "a.yaml").write_text(
        "type: mllp-in\nport: 99999\ncharset: KLINGON\nbogus: 1\n", encoding="utf-8"
    )
    (tmp_path / "channels" / "b.yaml").write_text("type: carrier-pigeon\n", encoding="utf-8")
    (tmp_path / "channels" / "c.yaml").write_text("type: mllp-in\n  port: [1\n", encoding="utf-8")
    result = pfi("check", "--config", str(tmp_path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    a = str(tmp_path / "channels" / "a.yaml")
    assert f"{a}:2:7: port: Input should be less than or equal to 65535" in lines
    assert f"{a}:3:10: charset: unknown charset 'KLINGON'" in lines
    assert f"{a}:4:8: bogus: unknown setting" in lines
    assert any(
        line.startswith(f"{tmp_path}/channels/b.yaml:1:7: type: unknown channel type 'carrier-pigeon'")
        for line in lines
    )
    assert any(line.startswith(f"{tmp_path}/channels/c.yaml:2:") and "YAML syntax" in line for line in lines)


def test_check_accepts_the_shipped_configuration(tmp_path):
    # `pfi check` also reads the DMP organisation certificate: give it a test PKI
    pki = generate_test_pki(tmp_path / "pki")
    env = {
        **os.environ,
        "PFI_DMP_CERT": str(pki.client.cert),
        "PFI_DMP_KEY": str(pki.client.key),
        "PFI_DMP_CA": str(pki.ca.cert),
    }
    result = pfi("check", "--config", str(ROOT), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: route" not in result.stdout  # the shipped routes forward checked orders only


def test_check_warns_about_orders_forwarded_without_the_teleradiology_profile_check(tmp_path):
    out = {"type": "mllp-out", "host": "127.0.0.1", "port": 2999}
    routes = [
        {
            "name": "orders",
            "match": {"channel": ["ris", "checked"], "type": ["ORM^O01", "OMI"]},
            "steps": [{"deliver": {"to": "platform"}}],
        }
    ]
    write_config(
        tmp_path, {"ris": inbound(port=2998), "checked": inbound(port=2997, tlr_orders=True), "platform": out}, routes
    )
    result = pfi("check", "--config", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: route orders: orders from channel ris are forwarded without the teleradiology "
        "profile check (tlr_orders: true on the channel: AE + ERR before the ACK)"
    ]


def test_check_reports_missing_environment_variable(tmp_path):
    write_config(tmp_path, {"in": {"type": "mllp-in", "port": "${PFI_TEST_UNSET_PORT}"}})
    result = pfi("check", "--config", str(tmp_path))
    assert result.returncode == 1 and "PFI_TEST_UNSET_PORT is not set" in result.stdout


@pytest.fixture
def running_engine(tmp_path):
    port = 23110
    cfg = write_config(tmp_path / "cfg", {"in": inbound(port=port, accept={"versions": ["2.5", "2.6"]})})
    proc = EngineProcess(cfg, tmp_path / "data")
    proc.start()
    yield proc, port
    if proc.proc.poll() is None:
        proc.terminate()


def test_send_checks_acks_and_exit_codes(running_engine, tmp_path):
    _, port = running_engine
    good = tmp_path / "two.hl7"
    good.write_bytes((sample_adt("S-1", sep="\n") + sample_adt("S-2", sep="\r\n")).encode())
    result = pfi("send", str(good), "--to", f"127.0.0.1:{port}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MSH-10=S-1: OK MSA-1=AA MSA-2=S-1" in result.stdout
    assert "MSH-10=S-2: OK MSA-1=AA MSA-2=S-2" in result.stdout
    bad = tmp_path / "old.hl7"
    bad.write_text(sample_adt("S-3", version="2.1"))
    result = pfi("send", str(bad), "--to", f"127.0.0.1:{port}")
    assert result.returncode == 1 and "NACK MSA-1=AE" in result.stdout and "203^" in result.stdout


def test_send_an_ans_example_with_lf_separators(running_engine):
    _, port = running_engine
    example = next(ANS.rglob("message_MDM_CR_Radio_INIT_N1_Base64.er7"))
    result = pfi("send", str(example), "--to", f"127.0.0.1:{port}")
    assert result.returncode == 0 and ": OK MSA-1=AA" in result.stdout


def test_send_to_nothing_fails_cleanly():
    result = pfi("send", str(ROOT / "README.md"), "--to", "127.0.0.1:1")
    assert result.returncode != 0 and "cannot connect" in result.stderr


def test_sigterm_stops_cleanly_and_tail_shows_events(running_engine, tmp_path):
    proc, port = running_engine
    msg = tmp_path / "m.hl7"
    msg.write_text(sample_adt("T-1", name="SECRET^Patient"))
    assert pfi("send", str(msg), "--to", f"127.0.0.1:{port}").returncode == 0
    assert proc.terminate() == 0
    assert "engine.stopped" in proc.output()
    assert "SECRET" not in proc.output()  # no patient names in logs
    tail = pfi("tail", "--config", str(tmp_path / "cfg"), "--data", str(tmp_path / "data"))
    assert "ADT^A01  ctrl=T-1  received  patient=***" in tail.stdout and "SECRET" not in tail.stdout
    phi = pfi("tail", "--config", str(tmp_path / "cfg"), "--data", str(tmp_path / "data"), "--show-phi")
    assert "patient=IPP001 SECRET Patient" in phi.stdout
    typed = pfi("tail", "--config", str(tmp_path / "cfg"), "--data", str(tmp_path / "data"), "--type", "ORU^R01")
    assert "T-1" not in typed.stdout


def test_tail_shows_control_characters_from_senders_without_obeying_them(running_engine, tmp_path):
    _, port = running_engine
    hostile = tmp_path / "hostile.hl7"
    # MSH-10 clears the screen and fakes a line; MSH-9 carries a bidi override.
    hostile.write_bytes(sample_adt("X\x1b[2J\x1b[H\x08FAKE", msg_type="ADT^A01\u202e").encode())
    pfi("send", str(hostile), "--to", f"127.0.0.1:{port}")
    tail = pfi("tail", "--config", str(tmp_path / "cfg"), "--data", str(tmp_path / "data"))
    assert "\x1b" not in tail.stdout and "\x08" not in tail.stdout and "\u202e" not in tail.stdout
    assert "ctrl=X\\x1b[2J\\x1b[H\\x08FAKE" in tail.stdout and "\\u202e" in tail.stdout


def test_printable_escapes_every_control_but_newline_and_tab():
    from engine.commands.safe_output import printable

    assert printable("a\tb\nc") == "a\tb\nc"
    assert printable("\x00\r\x1b\x7f\x9b\u2066") == "\\x00\\x0d\\x1b\\x7f\\x9b\\u2066"


def test_check_warns_about_dmp_sends_that_are_not_deferred(tmp_path):
    pki = generate_test_pki(tmp_path / "pki")
    env = {
        **os.environ,
        "PFI_DMP_CERT": str(pki.client.cert),
        "PFI_DMP_KEY": str(pki.client.key),
        "PFI_DMP_CA": str(pki.ca.cert),
    }
    shipped = pfi("check", "--config", str(ROOT), env=env)
    assert shipped.returncode == 0 and "not deferred" not in shipped.stdout  # PFI_DMP_DELAY: 5 min
    at_once = pfi("check", "--config", str(ROOT), env={**env, "PFI_DMP_DELAY": "0s"})
    assert at_once.returncode == 0, at_once.stdout + at_once.stderr
    warned = [line for line in at_once.stdout.splitlines() if "DMP sends are not deferred" in line]
    assert warned and all(line.startswith("warning: route ") for line in warned)
