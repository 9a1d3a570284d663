"""Typed results of a CDA validation."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field, computed_field


class Severity(str, Enum):
    """Error makes the document invalid; warning is reported but does not."""

    ERROR = "error"
    WARNING = "warning"


_WARNING_ROLES = {"warning", "warn", "info", "information", "informational", "note"}


def severity_from_role(role: str | None) -> Severity:
    """Schematron `role` (or `flag`) → severity; no role means error (an assert is a requirement)."""
    return Severity.WARNING if role and role.strip().lower() in _WARNING_ROLES else Severity.ERROR


class Issue(BaseModel):
    """One failed check: an XSD error, a failed assert or a successful report."""

    source: str = Field(description="'xsd' or the Schematron profile name")
    rule_id: str = Field(description="assert/report id, XSD error type, or a generated id")
    location: str = Field(description="XPath of the offending node ('/' for the document)")
    message: str
    severity: Severity
    kind: str = Field(default="failed-assert", description="failed-assert, successful-report, xsd, execution-error")
    test: str | None = None

    def line(self) -> str:
        """The readable one-line form used by `pfi validate`."""
        return f"{self.source}: {self.rule_id} at {self.location}: {self.message}"


class ProfileResult(BaseModel):
    """Outcome of one validation step (XSD or one Schematron) on one document."""

    source: str
    schematron: str | None = None
    failed_asserts: int = 0
    successful_reports: int = 0
    errors: int = 0
    warnings: int = 0
    elapsed_ms: float = 0.0


class ValidationReport(BaseModel):
    """Everything `validate_cda` found; `valid` is False as soon as one error-severity issue exists."""

    document_id: str | None = None
    template_ids: list[str] = Field(default_factory=list)
    body: str = "none"
    self_presentable: bool = Field(default=False, description="the CDA was embedded in an XSLT wrapper")
    profiles: list[ProfileResult] = Field(default_factory=list)
    issues: list[Issue] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list, description="profiles selected but unavailable, with why")
    timings: dict[str, float] = Field(default_factory=dict, description="milliseconds per step")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def valid(self) -> bool:
        return not any(issue.severity is Severity.ERROR for issue in self.issues)

    def profile(self, source: str) -> ProfileResult | None:
        """The result of one step by source name, or None if it did not run."""
        return next((p for p in self.profiles if p.source == source), None)
