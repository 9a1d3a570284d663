"""The CDA check the engine runs on documents in transit (`validate: cda` route steps and the
document channels' check before the ACK): XSD + the Schematron profiles of the kit, compiled once
per engine and reused, run in worker processes (engine/cda/pool.py, `cda_processes`) or, with
`cda_processes: 0`, in worker threads (never on the reactor thread).

Where the kit is: `cda_kit:` in pfi.yaml, else $PFI_CDA_KIT, else the ANS TestContenuCDA 3.0 kit
beside the project (../shared/corpus/cda/TestContenuCDA-3-0). A configuration that needs it while
it is missing fails at `pfi check` and at start (docs/cda-validation.md).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from engine.cda.kit import ENGINE_ROOT, ValidationKit
from engine.errors import ConfigurationError, ValidationError

KIT_ENV = "PFI_CDA_KIT"
DEFAULT_KIT = ENGINE_ROOT.parent / "shared" / "corpus" / "cda" / "TestContenuCDA-3-0"
MAX_REPORTED = 5


def kit_directory(setting: str, config_root: Path) -> Path:
    """Where the kit is, by the precedence above (relative paths from the configuration dir)."""
    chosen = setting or os.environ.get(KIT_ENV) or str(DEFAULT_KIT)
    path = Path(chosen)
    return path if path.is_absolute() else (config_root / path).resolve()


def kit_problems(setting: str, config_root: Path) -> list[str]:
    directory = kit_directory(setting, config_root)
    if not (directory / "infrastructure" / "cda" / "CDA_extended.xsd").is_file():
        return [
            f"a route or channel validates CDA documents but the CDA kit is not at {directory} "
            f"(set cda_kit in pfi.yaml or ${KIT_ENV} to the ANS TestContenuCDA 3.0 directory)"
        ]
    return []


def routes_validate_cda(routes) -> bool:
    """Does any step of any route (follow-ups included) say `validate: cda`?"""

    def uses(steps) -> bool:
        return any(s.validate_ == "cda" or uses(s.on_success) or uses(s.on_failure) for s in steps)

    return any(uses(route.steps) for route in routes)


def needs_kit(config) -> bool:
    """Routes with `validate: cda` or document channels with `check_cda` need the kit."""
    channels = (c for c in config.channels.values() if getattr(c, "ack_mode", "") == "document-request")
    return routes_validate_cda(config.routes) or any(getattr(c, "check_cda", "none") != "none" for c in channels)


class CdaChecker:
    """`problems(cda_bytes)` → blocking issues as 'source rule-id: message' (empty: valid)."""

    def __init__(self, kit: ValidationKit):
        self.kit = kit

    @classmethod
    def from_settings(
        cls, setting: str, config_root: Path, cache_dir: Path, stages: tuple[str, ...] = ("conformance", "dmp")
    ) -> "CdaChecker":
        """The checker of a kit, shared by every engine of the process (route tests start many):
        its compiled Schematrons are loaded once. Raises ConfigurationError without a kit."""
        problems = kit_problems(setting, config_root)
        if problems:
            raise ConfigurationError(problems)
        return shared_checker(kit_directory(setting, config_root), Path(cache_dir), tuple(stages))

    def warm_up(self) -> None:
        """Compile (or load from cache) every Schematron now: the first document must not pay it."""
        self.kit.warm_up()

    def problems(self, content: bytes) -> list[str]:
        from engine.cda.validate import validate_cda

        try:
            report = validate_cda(content, self.kit)
        except ValidationError as exc:
            return [f"not a CDA document: {exc}"]
        errors = [i for i in report.issues if i.severity.value == "error"]
        lines = [f"{i.source} {i.rule_id}: {i.message.strip()[:200]}" for i in errors[:MAX_REPORTED]]
        if len(errors) > MAX_REPORTED:
            lines.append(f"... and {len(errors) - MAX_REPORTED} more")
        return lines

    __call__ = problems


_checkers: dict[tuple, CdaChecker] = {}
_checkers_lock = threading.Lock()


def shared_checker(directory: Path, cache_dir: Path, stages: tuple[str, ...]) -> CdaChecker:
    """The in-process checker of a kit and stages, built once per process."""
    with _checkers_lock:
        key = (directory, stages)
        if key not in _checkers:
            derived = directory.parent / "derived" / "structMin-missing-voc"
            value_sets = (derived,) if derived.is_dir() else ()
            _checkers[key] = CdaChecker(
                ValidationKit(directory, cache_dir=cache_dir, value_set_dirs=value_sets, stages=stages)
            )
        return _checkers[key]
