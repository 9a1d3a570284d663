"""CDA R2 validation: XSD (lxml) and Schematron compiled to XSLT 2.0 run by saxonche.

Public API::

    kit = ValidationKit(Path("../shared/corpus/cda/TestContenuCDA-3-0"),
                        value_set_dirs=(Path(".../derived/structMin-missing-voc"),))
    report = validate_cda(data, kit)       # ValidationReport: .valid, .issues, .profiles, .timings
"""

from engine.cda.kit import Profile, ValidationKit, load_profile_table
from engine.cda.models import Issue, ProfileResult, Severity, ValidationReport
from engine.cda.validate import validate_cda

__all__ = [
    "Issue",
    "Profile",
    "ProfileResult",
    "Severity",
    "ValidationKit",
    "ValidationReport",
    "load_profile_table",
    "validate_cda",
]
