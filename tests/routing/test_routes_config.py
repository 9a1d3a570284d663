"""routes.yaml validation: every problem at once, with file:line:col."""

from __future__ import annotations

import pytest

from engine.config.load import load_config
from engine.errors import ConfigurationError
from tests.support import inbound, write_config

ROUTES = """routes:
  - name: r1
    match: {channel: in, fields: {"PID-3((": x}}
    steps:
      - deliver: {to: [nowhere]}
      - label: same
        gate: {when: {"PID-32": VALI}}
      - label: same
        transform: {xslt: mappings/missing.xsl}
      - frobnicate: yes
      - stop: enough
      - deliver: {to: out}
  - name: r1
    match: {channel: out}
    steps:
      - deliver: {to: in}
"""


def test_all_route_errors_reported_with_positions(tmp_path):
    write_config(tmp_path, {"in": inbound(), "out": {"type": "mllp-out", "host": "127.0.0.1", "port": 9}})
    (tmp_path / "routes.yaml").write_text(ROUTES, encoding="utf-8")
    with pytest.raises(ConfigurationError) as info:
        load_config(tmp_path)
    text = "\n".join(str(p) for p in info.value.problems)
    f = str(tmp_path / "routes.yaml")
    assert f"{f}:10:21: frobnicate: unknown setting" in text
    assert "bad HL7 path 'PID-3(('" in text
    assert f"{f}:5:19: route 'r1': unknown channel 'nowhere'" in text
    assert "duplicate step label 'same'" in text
    assert "mapping file 'mappings/missing.xsl' not found" in text
    assert "step unreachable after a `stop` step" in text
    assert "duplicate route name" in text
    assert "match.channel 'out' is not a configured inbound channel" in text
    assert "channel 'in' (mllp-in) cannot be a destination" in text


def test_valid_routes_load_with_labels(tmp_path):
    write_config(
        tmp_path,
        {"in": inbound(), "out": {"type": "mllp-out", "host": "127.0.0.1", "port": 9}},
        routes=[{"name": "a", "match": {"channel": "in"}, "steps": [{"deliver": {"to": "out"}}]}],
    )
    [route] = load_config(tmp_path).routes
    assert route.steps[0].label == "deliver-1"


def test_follow_ups_only_where_an_outcome_exists(tmp_path):
    out = {"type": "mllp-out", "host": "127.0.0.1", "port": 9}
    steps = [
        {"validate": "document-request", "on_failure": [{"zam": {"kind": "Z01", "to": "out"}}]},
        {"gate": {"when": {"PID-32": "VALI"}}, "on_failure": [{"deliver": {"to": "out"}}]},
        {"validate": "document-request", "on_success": [{"deliver": {"to": "out"}}]},
    ]
    write_config(
        tmp_path, {"in": inbound(), "out": out}, routes=[{"name": "a", "match": {"channel": "in"}, "steps": steps}]
    )
    with pytest.raises(ConfigurationError) as info:
        load_config(tmp_path)
    text = "\n".join(str(p) for p in info.value.problems)
    assert text.count("on_failure belongs to a deliver or validate step") == 1  # the gate only
    assert text.count("on_success belongs to a deliver step") == 1
