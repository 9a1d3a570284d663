"""The validation kit: where the ANS test kit lives, which profiles apply, and their compiled forms."""

from __future__ import annotations

import threading
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lxml import etree

from engine.cda.compiler import CompiledSchematron, SchematronCompiler
from engine.cda.saxon_runner import LoadedSchematron, load_stylesheet
from engine.cda.sch_source import find_file
from engine.errors import ConfigurationError

ENGINE_ROOT = Path(__file__).resolve().parent.parent.parent
PROFILE_TABLE = Path(__file__).with_name("profiles.toml")
XSD_RELATIVE = Path("infrastructure/cda/CDA_extended.xsd")
DEFAULT_CACHE_DIR = Path("var/cache/schematron")
ANY_TEMPLATE = "*"


@dataclass(frozen=True)
class Profile:
    """One row of the profile table (profiles.toml)."""

    name: str
    schematron: str
    template: str = ANY_TEMPLATE
    body: str = "any"
    optional: bool = False
    stage: str = "conformance"

    def applies_to(self, template_ids: set[str], body: str) -> bool:
        """True if this profile must run on a document with these templateIds and body kind."""
        template_ok = self.template == ANY_TEMPLATE or self.template in template_ids
        return template_ok and self.body in ("any", body)


def load_profile_table(path: Path = PROFILE_TABLE) -> tuple[Profile, ...]:
    """Read the profile table; a malformed row is a configuration error naming the row."""
    try:
        rows = tomllib.loads(path.read_text(encoding="utf-8")).get("profile", [])
        return tuple(Profile(**row) for row in rows)
    except (OSError, tomllib.TOMLDecodeError, TypeError) as exc:
        raise ConfigurationError([f"CDA profile table {path}: {exc}"]) from exc


@lru_cache(maxsize=8)
def load_xsd(path: str) -> etree.XMLSchema:
    """The CDA XML Schema, loaded once per path and kept (lxml XMLSchema is reusable)."""
    try:
        return etree.XMLSchema(etree.parse(path))
    except (OSError, etree.XMLSchemaParseError, etree.XMLSyntaxError) as exc:
        raise ConfigurationError([f"CDA XSD cannot be loaded from {path}: {exc}"]) from exc


class ValidationKit:
    """A configured kit directory plus the compiled Schematrons it needs (compiled lazily, cached).

    `kit_dir` is the ANS TestContenuCDA 3.0 directory; `value_set_dirs` are searched for value-set
    files a Schematron references but the kit lacks (structMin's voc-1.2.250.1.213.1.1.5.471);
    `cache_dir` holds generated XSLT across restarts; `stages` selects which profile stages run.
    """

    def __init__(
        self,
        kit_dir: Path,
        *,
        cache_dir: Path = DEFAULT_CACHE_DIR,
        value_set_dirs: tuple[Path, ...] = (),
        profiles: tuple[Profile, ...] | None = None,
        stages: tuple[str, ...] = ("conformance", "dmp"),
    ):
        self.kit_dir = Path(kit_dir)
        if not self.kit_dir.is_dir():
            raise ConfigurationError([f"CDA validation kit directory not found: {self.kit_dir}"])
        self.profiles = tuple(p for p in (profiles or load_profile_table()) if p.stage in stages)
        self.compiler = SchematronCompiler(Path(cache_dir), tuple(value_set_dirs))
        self._loaded: dict[str, LoadedSchematron] = {}
        self._compiled: dict[str, CompiledSchematron] = {}
        self._lock = threading.Lock()

    @property
    def xsd_path(self) -> Path:
        return self.kit_dir / XSD_RELATIVE

    def xsd(self) -> etree.XMLSchema:
        """The kit's CDA_extended.xsd, loaded once."""
        return load_xsd(str(self.xsd_path))

    def profile_path(self, profile: Profile) -> Path | None:
        """Where a profile's .sch is (None if absent); 'kit:' and 'engine:' prefixes as in the table."""
        scheme, _, relative = profile.schematron.partition(":")
        base = {"kit": self.kit_dir, "engine": ENGINE_ROOT}.get(scheme)
        if base is None:
            raise ConfigurationError([f"profile {profile.name}: unknown location prefix in {profile.schematron}"])
        return find_file((base / relative).resolve())

    def schematron(self, profile: Profile) -> LoadedSchematron:
        """The ready-to-run stylesheet for a profile: compiled (or read from cache) and loaded once."""
        with self._lock:
            if profile.name not in self._loaded:
                path = self.profile_path(profile)
                if path is None:
                    raise ConfigurationError([f"profile {profile.name}: {profile.schematron} not found"])
                self._loaded[profile.name] = self._compile_and_load(profile.name, path)
            return self._loaded[profile.name]

    def _compile_and_load(self, name: str, path: Path) -> LoadedSchematron:
        compiled = self.compiler.compile(path)
        try:
            loaded = load_stylesheet(name, compiled.xslt)
        except ConfigurationError:
            if not compiled.from_cache:
                raise
            compiled = self.compiler.compile(path, use_cache=False)  # a damaged cache entry: regenerate
            loaded = load_stylesheet(name, compiled.xslt)
        self._compiled[name] = compiled
        return loaded

    def compiled(self, profile_name: str) -> CompiledSchematron | None:
        """How a loaded profile was obtained (fresh compile or cache), for benchmarks and logs."""
        return self._compiled.get(profile_name)

    def warm_up(self) -> None:
        """Load the XSD and every available profile now (at start-up) rather than on first document."""
        self.xsd()
        for profile in self.profiles:
            if self.profile_path(profile) is not None:
                self.schematron(profile)
