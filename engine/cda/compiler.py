"""Schematron → XSLT compilation with an on-disk cache keyed by a content hash of every input.

Cache layout (directory configurable, default `var/cache/schematron/`):

* `<key>.xsl` — the generated stylesheet; `key` = SHA-256 over the generator's own source, the lxml
  ISO stylesheets, the bytes of every file the schema was built from (top .sch, all includes,
  overlay value-set files) and the static base URI;
* `index/<sha1 of the .sch path>.json` — which files that schema was built from last time, so that a
  restart can recompute the key by hashing those files (a few ms) without re-running the pipeline.
  If an include is added or removed, the including file changed, so the key changes too.

Value sets read through `document($variable)` at run time are not part of the key: they are data,
read fresh by each run of the stylesheet (their *paths* are).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import structlog

from engine.cda import sch_source, svrl_xslt
from engine.cda.sch_source import find_file

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CompiledSchematron:
    """A generated SVRL stylesheet and where it came from."""

    sch_path: Path
    key: str
    xslt: bytes
    from_cache: bool
    elapsed_ms: float


def _tool_fingerprint() -> bytes:
    digest = hashlib.sha256(svrl_xslt.GENERATOR_VERSION.encode())
    for path in (Path(svrl_xslt.__file__), Path(sch_source.__file__), sch_source.INCLUDE_XSL, sch_source.EXPAND_XSL):
        digest.update(path.read_bytes())
    return digest.digest()


class SchematronCompiler:
    """Turns a .sch into SVRL-producing XSLT 2.0, once; later calls read the cache."""

    def __init__(self, cache_dir: Path, value_set_dirs: tuple[Path, ...] = ()):
        self.cache_dir = Path(cache_dir)
        self.value_set_dirs = tuple(Path(d) for d in value_set_dirs)
        self._tools = _tool_fingerprint()

    def compile(self, sch_path: Path, *, use_cache: bool = True) -> CompiledSchematron:
        """The stylesheet for `sch_path`, from the cache when every input is unchanged."""
        started = time.perf_counter()
        cached = self._from_cache(sch_path) if use_cache else None
        if cached is not None:
            key, xslt = cached
            return CompiledSchematron(sch_path, key, xslt, True, _ms_since(started))
        key, xslt = self._generate(sch_path)
        return CompiledSchematron(sch_path, key, xslt, False, _ms_since(started))

    # -- cache ------------------------------------------------------------------------------
    def _index_path(self, sch_path: Path) -> Path:
        name = hashlib.sha1(str(Path(sch_path).resolve()).encode()).hexdigest()
        return self.cache_dir / "index" / f"{name}.json"

    def _from_cache(self, sch_path: Path) -> tuple[str, bytes] | None:
        try:
            files = [Path(p) for p in json.loads(self._index_path(sch_path).read_text())["files"]]
            key = self._key(sch_path, files)
            return key, (self.cache_dir / f"{key}.xsl").read_bytes()
        except (OSError, ValueError, KeyError):
            return None

    def _key(self, sch_path: Path, files: list[Path]) -> str:
        digest = hashlib.sha256(self._tools)
        digest.update(_base_uri(sch_path).encode())
        for path in files:
            digest.update(str(path).encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()

    def _store(self, sch_path: Path, files: list[Path], key: str, xslt: bytes) -> None:
        """Write the cache entry; an unwritable cache only costs a recompilation next time."""
        index = self._index_path(sch_path)
        try:
            index.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.cache_dir / f"{key}.xsl", xslt)
            _atomic_write(index, json.dumps({"sch": str(sch_path), "files": [str(f) for f in files]}).encode())
        except OSError as exc:
            log.warning("schematron.cache_unwritable", cache_dir=str(self.cache_dir), error=exc.strerror)

    # -- generation -------------------------------------------------------------------------
    def _generate(self, sch_path: Path) -> tuple[str, bytes]:
        expanded, files = sch_source.preprocess(sch_path)
        overlay: list[Path] = []
        rewriter = self._href_rewriter(find_file(Path(sch_path)) or Path(sch_path), overlay)
        xslt = svrl_xslt.generate_svrl_xslt(expanded.getroot(), _base_uri(sch_path), rewriter)
        inputs = _unique(files + overlay)
        key = self._key(sch_path, inputs)
        self._store(sch_path, inputs, key, xslt)
        log.info("schematron.compiled", schematron=str(sch_path), key=key[:12], files=len(inputs))
        return key, xslt

    def _href_rewriter(self, sch_path: Path, overlay: list[Path]):
        """Keep hrefs that exist next to the .sch; take missing ones from the value-set directories."""

        def rewrite(href: str) -> str:
            if "://" in href or find_file(sch_path.parent / unquote(href)) is not None:
                return href
            for directory in self.value_set_dirs:
                candidate = find_file(directory / Path(unquote(href)).name)
                if candidate is not None:
                    overlay.append(candidate)
                    return candidate.resolve().as_uri()
            log.warning("schematron.value_set_missing", schematron=str(sch_path), href=href)
            return href

        return rewrite


def _base_uri(sch_path: Path) -> str:
    found = find_file(Path(sch_path)) or Path(sch_path)
    return found.resolve().as_uri()


def _unique(paths: list[Path]) -> list[Path]:
    seen: dict[str, Path] = {}
    for path in paths:
        seen.setdefault(str(path.resolve()), path.resolve())
    return list(seen.values())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
