"""Running generated SVRL stylesheets with saxonche, and reading their SVRL output.

One SaxonC processor per process; each compiled stylesheet is kept in memory (PyXsltExecutable)
and reused for every document. SaxonC-HE 13 cannot export or reload a compiled form (SEF export
and just-in-time compilation both need Saxon-EE; enabling JIT on HE aborts the process), so the
fastest restart path is a compact generated stylesheet (see svrl_xslt) compiled once per process.
Executables are not thread-safe: each one is used under its own lock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from lxml import etree

from engine.cda.models import Issue, ProfileResult, Severity, severity_from_role
from engine.errors import ConfigurationError

SVRL_NS = {"svrl": "http://purl.oclc.org/dsdl/svrl"}

_processor = None
_processor_lock = threading.Lock()


def processor():
    """The process-wide SaxonC processor (created on first use: it starts a JVM-like runtime)."""
    global _processor
    with _processor_lock:
        if _processor is None:
            from saxonche import PySaxonProcessor

            _processor = PySaxonProcessor(license=False)
        return _processor


@dataclass
class LoadedSchematron:
    """A compiled stylesheet ready to run, with its load time."""

    name: str
    executable: object
    load_ms: float
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, document) -> str:
        """Validate a parsed Saxon document node; return the SVRL text."""
        with self.lock:
            self.executable.set_global_context_item(xdm_item=document)
            return self.executable.transform_to_string(xdm_node=document)


def load_stylesheet(name: str, xslt: bytes) -> LoadedSchematron:
    """Compile generated XSLT text with saxonche."""
    from saxonche import PySaxonApiError

    started = time.perf_counter()
    compiler = processor().new_xslt30_processor()
    try:
        executable = compiler.compile_stylesheet(stylesheet_text=xslt.decode("utf-8"), encoding="UTF-8")
    except PySaxonApiError as exc:
        raise ConfigurationError([f"schematron {name}: generated XSLT does not compile: {exc}"]) from exc
    return LoadedSchematron(name, executable, (time.perf_counter() - started) * 1000)


def saxon_document(xml_text: str):
    """Hand an already safety-checked document (serialised by lxml, no DTD) to Saxon."""
    return processor().parse_xml(xml_text=xml_text)


def run_profile(loaded: LoadedSchematron, document, schematron: str) -> tuple[ProfileResult, list[Issue]]:
    """Run one Schematron; an engine-side failure (e.g. a missing value set) becomes an issue."""
    from saxonche import PySaxonApiError

    started = time.perf_counter()
    try:
        issues = parse_svrl(loaded.run(document), loaded.name)
    except PySaxonApiError as exc:
        issues = [
            Issue(
                source=loaded.name,
                rule_id="execution-error",
                location="/",
                kind="execution-error",
                message=f"schematron could not run: {' '.join(str(exc).split())}",
                severity=Severity.ERROR,
            )
        ]
    return _summary(loaded.name, schematron, issues, started), issues


def _summary(name: str, schematron: str, issues: list[Issue], started: float) -> ProfileResult:
    return ProfileResult(
        source=name,
        schematron=schematron,
        failed_asserts=sum(i.kind == "failed-assert" for i in issues),
        successful_reports=sum(i.kind == "successful-report" for i in issues),
        errors=sum(i.severity is Severity.ERROR for i in issues),
        warnings=sum(i.severity is Severity.WARNING for i in issues),
        elapsed_ms=(time.perf_counter() - started) * 1000,
    )


def parse_svrl(svrl: str, source: str) -> list[Issue]:
    """SVRL failed-assert / successful-report elements → issues (our own output: trusted)."""
    root = etree.fromstring(svrl.encode("utf-8"))
    issues = []
    for index, node in enumerate(root.xpath("svrl:failed-assert|svrl:successful-report", namespaces=SVRL_NS)):
        kind = etree.QName(node).localname
        text = " ".join("".join(node.xpath("svrl:text//text()", namespaces=SVRL_NS)).split())
        issues.append(
            Issue(
                source=source,
                rule_id=node.get("id") or _short_id(text, index),
                location=node.get("location") or "/",
                message=text,
                severity=severity_from_role(node.get("role") or node.get("flag")),
                kind=kind,
                test=node.get("test"),
            )
        )
    return issues


def _short_id(text: str, index: int) -> str:
    """Kit asserts carry no @id; use their message tag ('[dansJeuDeValeurs]', '(SMDS_…)') if any."""
    for opening, closing in (("[", "]"), ("(", ")")):
        if text.startswith(opening) and closing in text:
            return text[1 : text.index(closing)].strip() or f"assert-{index + 1}"
    return f"assert-{index + 1}"
