"""`pfi request FILE` exit codes and output."""

from __future__ import annotations

import json

from engine.cli import main


def test_acceptable_request(sample, tmp_path, capsys):
    path = tmp_path / "ok.hl7"
    path.write_bytes(sample.text().encode())
    assert main(["request", str(path)]) == 0
    assert "initial" in capsys.readouterr().out


def test_json_output_omits_document_bytes(sample, tmp_path, capsys):
    path = tmp_path / "ok.hl7"
    path.write_bytes(sample.text().encode())
    assert main(["request", "--json", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["action"] == "initial" and "content" not in data["documents"][0]


def test_nack_and_consistency_errors(sample, tmp_path, capsys):
    path = tmp_path / "bad.hl7"
    path.write_bytes(sample.set("ORC", 1, "CA").text().encode())
    assert main(["request", str(path)]) == 1
    assert "ACTION_INCONSISTENT" in capsys.readouterr().out
    sample.set("ORC", 1, "NW").set("TXA", 12, "9.9.9")
    path.write_bytes(sample.text().encode())
    assert main(["request", str(path)]) == 1
    assert "DOC_ID_MISMATCH" in capsys.readouterr().out


def test_unreadable_file(tmp_path, capsys):
    path = tmp_path / "junk.hl7"
    path.write_bytes(b"\x00\x01 not hl7")
    assert main(["request", str(path)]) == 2
    assert main(["request", str(tmp_path / "missing.hl7")]) == 2
