"""The Schematron → XSLT pipeline on a small hand-written schema whose expected SVRL is known.

The schema exercises what the ANS kit uses: includes (with a case-mismatched, accented, spaced
path), abstract patterns (is-a + param), abstract rules (extends), global pattern lets, phases,
role → severity, value-of/name in messages, report, attribute contexts, document() relative to
the .sch, and a literal doc() href served from a value-set overlay directory.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from engine.cda.compiler import SchematronCompiler
from engine.cda.models import Severity
from engine.cda.saxon_runner import load_stylesheet, run_profile, saxon_document
from engine.cda.sch_source import find_file
from engine.errors import ConfigurationError

MAIN = """<?xml version="1.0" encoding="UTF-8"?>
<schema xmlns="http://purl.oclc.org/dsdl/schematron" queryBinding="xslt2" defaultPhase="main">
  <ns prefix="h" uri="urn:hl7-org:v3"/>
  <let name="expected" value="'X'"/>
  <include href="en-tête dir/abstract.sch"/>
  <phase id="main"><active pattern="p1"/><active pattern="p2"/><active pattern="vs"/></phase>
  <pattern id="p1">
    <let name="fromPattern" value="'G'"/>
    <rule context="h:doc">
      <assert id="OV" test="h:code/@code = doc('include/overlay-vs.xml')/codes/code/@value">overlay</assert>
    </rule>
    <rule context="h:doc/h:item[@kind = 'special']">
      <assert id="A1" test="@value = 's'">special <value-of select="@value"/></assert>
    </rule>
    <rule context="h:doc/h:item">
      <assert id="A2" role="warning" test="@value = $expected">item <name/> has "<value-of select="@value"/>"</assert>
      <report id="R1" test="@value = 'boom'">boom {not an AVT}</report>
    </rule>
  </pattern>
  <pattern id="p2">
    <rule abstract="true" id="hasValue"><assert id="A3" test="@value">no value</assert></rule>
    <rule context="h:doc/h:item">
      <extends rule="hasValue"/>
      <assert id="A4" test="$fromPattern = 'G'">pattern let not global</assert>
    </rule>
    <rule context="h:item/@value">
      <assert id="A5" test="matches(., '^.{1,5}$')">too long</assert>
    </rule>
  </pattern>
  <pattern id="inactive">
    <rule context="h:doc"><assert id="NEVER" test="false()">inactive pattern ran</assert></rule>
  </pattern>
  <pattern id="vs" is-a="inValueSet">
    <param name="ctx" value="h:doc/h:code"/>
    <param name="file" value="'vs/codes.xml'"/>
  </pattern>
</schema>
"""

ABSTRACT = """<pattern xmlns="http://purl.oclc.org/dsdl/schematron" abstract="true" id="inValueSet">
  <rule context="$ctx">
    <assert id="VS" test="@code = document($file)//code/@value">code <value-of select="@code"/> not in <value-of select="$file"/></assert>
  </rule>
</pattern>
"""

DOCUMENT = """<doc xmlns="urn:hl7-org:v3"><item value="X"/><item value="boom"/><item kind="special" value="t"/>
<item/><item value="toolongvalue"/><code code="b"/></doc>"""


@pytest.fixture
def schema_dir(tmp_path: Path) -> Path:
    """The schema on disk; the included file's name differs in case from its href."""
    (tmp_path / "en-tête dir").mkdir()
    (tmp_path / "en-tête dir" / "Abstract.sch").write_text(ABSTRACT, encoding="utf-8")
    (tmp_path / "vs").mkdir()
    (tmp_path / "vs" / "codes.xml").write_text('<codes><code value="a"/></codes>')
    (tmp_path / "main.sch").write_text(MAIN, encoding="utf-8")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "overlay-vs.xml").write_text('<codes><code value="a"/><code value="b"/></codes>')
    return tmp_path


def _run(schema_dir: Path, cache: Path, overlay: bool = True):
    dirs = (schema_dir / "overlay",) if overlay else ()
    compiled = SchematronCompiler(cache, dirs).compile(schema_dir / "main.sch")
    loaded = load_stylesheet("test", compiled.xslt)
    return compiled, run_profile(loaded, saxon_document(DOCUMENT), "main.sch")


def test_generated_stylesheet_reports_exactly_the_expected_failures(schema_dir, tmp_path):
    _, (summary, issues) = _run(schema_dir, tmp_path / "cache")
    assert Counter(i.rule_id for i in issues) == Counter({"A2": 3, "A1": 1, "A3": 1, "A5": 1, "VS": 1, "R1": 1})
    assert summary.failed_asserts == 7 and summary.successful_reports == 1
    assert summary.warnings == 3 and summary.errors == 5


def test_issue_details_locations_and_messages(schema_dir, tmp_path):
    _, (_, issues) = _run(schema_dir, tmp_path / "cache")
    by_id = {i.rule_id: i for i in issues}
    assert by_id["A5"].location == "/*:doc[1]/*:item[5]/@value"
    assert by_id["A1"].message == "special t"
    assert by_id["A1"].location == "/*:doc[1]/*:item[3]"
    assert by_id["VS"].message == "code b not in vs/codes.xml"
    assert by_id["R1"].message == "boom {not an AVT}" and by_id["R1"].kind == "successful-report"
    assert by_id["A2"].severity is Severity.WARNING and by_id["A3"].severity is Severity.ERROR
    assert {i.message for i in issues if i.rule_id == "A2"} == {
        'item item has "boom"',
        'item item has ""',
        'item item has "toolongvalue"',
    }


def test_missing_literal_value_set_without_overlay_is_a_clear_execution_error(schema_dir, tmp_path):
    _, (summary, issues) = _run(schema_dir, tmp_path / "cache", overlay=False)
    assert [i.kind for i in issues] == ["execution-error"]
    assert "overlay-vs.xml" in issues[0].message and summary.errors == 1


def test_second_compiler_reads_the_cache_and_a_changed_include_recompiles(schema_dir, tmp_path):
    cache = tmp_path / "cache"
    first = SchematronCompiler(cache).compile(schema_dir / "main.sch")
    again = SchematronCompiler(cache).compile(schema_dir / "main.sch")
    assert (first.from_cache, again.from_cache) == (False, True)
    assert again.key == first.key and again.xslt == first.xslt
    included = schema_dir / "en-tête dir" / "Abstract.sch"
    included.write_text(ABSTRACT.replace("not in", "is not in"), encoding="utf-8")
    changed = SchematronCompiler(cache).compile(schema_dir / "main.sch")
    assert changed.from_cache is False and changed.key != first.key


def test_missing_include_is_a_configuration_error(tmp_path):
    (tmp_path / "main.sch").write_text(MAIN, encoding="utf-8")
    with pytest.raises(ConfigurationError, match="not found"):
        SchematronCompiler(tmp_path / "cache").compile(tmp_path / "main.sch")


def test_find_file_matches_case_and_unicode_normalisation(tmp_path):
    (tmp_path / "en-tête").mkdir()
    (tmp_path / "en-tête" / "E_directiveanticipee_int.sch").write_text("<x/>")
    decomposed = "en-te\u0302te"  # the same name in NFD form
    found = find_file(tmp_path / decomposed / "E_directiveAnticipee_int.sch")
    assert found == tmp_path / "en-tête" / "E_directiveanticipee_int.sch"
    assert find_file(tmp_path / "en-tête" / "absent.sch") is None


def test_unwritable_cache_still_compiles(schema_dir, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    compiled = SchematronCompiler(blocker / "cache", (schema_dir / "overlay",)).compile(schema_dir / "main.sch")
    assert compiled.from_cache is False and compiled.xslt.startswith(b"<?xml")
