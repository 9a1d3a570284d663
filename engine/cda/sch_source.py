"""Steps 1 and 2 of the ISO Schematron pipeline, and the kit's file-name quirks.

Includes are resolved and abstract patterns expanded with the ISO XSLT 1.0 stylesheets shipped in
the installed lxml package (`isoschematron/resources/xsl/iso-schematron-xslt1/`). Every file those
stylesheets load goes through `KitResolver`, which makes the kit usable on a case-sensitive file
system without editing it:

* a path that does not exist as written is matched component by component, case-insensitively
  (`E_directiveAnticipee_int.sch` → `E_directiveanticipee_int.sch`);
* percent-encoded and accented names (`en-tête`) are decoded and read by Python, so the XSLT engine
  never has to decode a non-ASCII URI (saxonche cannot);
* include hrefs that are not valid URIs (`E_observationTNM _fr.sch` has a space) are
  percent-encoded before libxml2 sees them, and decoded again by the resolver.

The schema text handed to step 3 is therefore fully self-contained: saxonche never resolves an
include, only value-set documents (ASCII paths).
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from lxml import etree, isoschematron

from engine.errors import ConfigurationError

ISO_XSL_DIR = Path(isoschematron.__file__).parent / "resources" / "xsl" / "iso-schematron-xslt1"
INCLUDE_XSL = ISO_XSL_DIR / "iso_dsdl_include.xsl"
EXPAND_XSL = ISO_XSL_DIR / "iso_abstract_expand.xsl"
SCH_NS = "http://purl.oclc.org/dsdl/schematron"


def find_file(path: Path) -> Path | None:
    """Return `path` if it exists, else the existing file whose name differs only by case/normalisation."""
    if path.is_file():
        return path
    current = Path(path.anchor or "/")
    for part in path.parts[1:] if path.is_absolute() else path.parts:
        if (current / part).exists():
            current = current / part
            continue
        match = _match_entry(current, part)
        if match is None:
            return None
        current = match
    return current if current.is_file() else None


def _match_entry(directory: Path, name: str) -> Path | None:
    if name == "..":
        return directory.parent
    wanted = _fold(name)
    try:
        entries = os.listdir(directory)
    except OSError:
        return None
    return next((directory / e for e in sorted(entries) if _fold(e) == wanted), None)


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def url_to_path(url: str) -> Path:
    """A file: URL or plain path (possibly percent-encoded) as a local path."""
    parsed = urlparse(url)
    if parsed.scheme in ("file", ""):
        return Path(unquote(parsed.path))
    raise ConfigurationError([f"schematron refers to a non-local resource: {url}"])


class KitResolver(etree.Resolver):
    """Resolves every file read during steps 1–2 tolerantly, and records what was read."""

    def __init__(self) -> None:
        super().__init__()
        self.files_read: list[Path] = []

    def resolve(self, url, pubid, context):
        path = find_file(url_to_path(url))
        if path is None:
            raise ConfigurationError([f"schematron include not found: {unquote(url)}"])
        self.files_read.append(path)
        return self.resolve_string(encode_include_hrefs(path.read_bytes()), context, base_url=path.resolve().as_uri())


def encode_include_hrefs(data: bytes) -> bytes:
    """Percent-encode `include/@href` (spaces, accents) so libxml2 accepts them as URIs."""
    parser = etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False)
    root = etree.fromstring(data, parser)
    changed = False
    for include in root.iter(f"{{{SCH_NS}}}include"):
        href = include.get("href", "")
        encoded = quote(href, safe="/:#%?=&;@+$,!~*'()")
        if encoded != href:
            include.set("href", encoded)
            changed = True
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8") if changed else data


def _iso_transform(xsl_path: Path, parser: etree.XMLParser) -> etree.XSLT:
    # lxml's document() uses the resolvers of the parser that read the stylesheet.
    return etree.XSLT(etree.parse(str(xsl_path), parser))


def preprocess(sch_path: Path) -> tuple[etree._ElementTree, list[Path]]:
    """Steps 1 and 2 for `sch_path`; returns the expanded schema and the files it was built from."""
    resolver = KitResolver()
    parser = etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False)
    parser.resolvers.add(resolver)
    source = find_file(sch_path)
    if source is None:
        raise ConfigurationError([f"schematron not found: {sch_path}"])
    document = etree.ElementTree(
        etree.fromstring(encode_include_hrefs(source.read_bytes()), parser, base_url=source.resolve().as_uri())
    )
    included = _run(_iso_transform(INCLUDE_XSL, parser), document, "include")
    expanded = _run(_iso_transform(EXPAND_XSL, parser), included, "abstract expansion")
    return expanded, [source] + resolver.files_read


def _run(transform: etree.XSLT, document, step: str):
    try:
        result = transform(document)
    except etree.XSLTApplyError as exc:
        raise ConfigurationError([f"schematron {step} failed: {exc}"]) from exc
    if result.getroot() is None:
        raise ConfigurationError([f"schematron {step} produced no schema"])
    return result
