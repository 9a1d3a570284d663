"""Step 3 of the ISO Schematron pipeline: an SVRL-producing XSLT 2.0 stylesheet (xslt2 binding).

Input is a schema whose includes are resolved (step 1) and abstract patterns expanded (step 2).
Semantics follow the ISO skeleton the ANS kit compiles with, so that verdicts are comparable:

* one XSLT mode per active pattern; the whole document is walked once per pattern and, within a
  pattern, only the first matching rule fires on a node (rule priorities decrease in schema order);
* schema-, phase- and pattern-level `let` become global variables (the kit relies on pattern lets
  being visible from other patterns); rule-level `let` are local;
* `defaultPhase` selects the active patterns, otherwise every pattern is active;
* abstract rules (`rule abstract="true"`, used through `extends`) become named templates called in
  place, instead of being copied into every concrete rule: the structuration minimale profile has
  677 `extends`, and copying them is what makes the skeleton's output 10 MB and slow to load. An
  abstract rule that refers to a variable it does not declare is inlined instead (same semantics).
* messages keep text, `value-of` and `name`; `emph`/`dir`/`span` keep their text content.

Literal `doc()`/`document()` hrefs are resolved at generation time by `href_rewriter`, so that a
value-set file missing from the kit can come from an overlay directory.
"""

from __future__ import annotations

import re
from typing import Callable

from lxml import etree

SCH = "http://purl.oclc.org/dsdl/schematron"
XSL = "http://www.w3.org/1999/XSL/Transform"
SVRL = "http://purl.oclc.org/dsdl/svrl"
XS = "http://www.w3.org/2001/XMLSchema"
PFI = "urn:pfi-engine:schematron"
GENERATOR_VERSION = "pfi-svrl-xslt2/1"

_RESERVED_PREFIXES = {"xsl", "svrl", "xs", "pfi", "xml"}
_DOC_CALL = re.compile(r"""\b(doc|document)\(\s*(['"])([^'"]+)\2\s*\)""")
_VAR_REF = re.compile(r"\$([A-Za-z_][\w.\-]*)")
_BOUND_VAR = re.compile(r"\b(?:for|some|every|let)\s+\$([A-Za-z_][\w.\-]*)|,\s*\$([A-Za-z_][\w.\-]*)\s+(?:in|:=)")

_PATH_FUNCTIONS = """
<xsl:stylesheet version="2.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:pfi="urn:pfi-engine:schematron">
  <xsl:function name="pfi:path" as="xs:string">
    <xsl:param name="node" as="node()"/>
    <xsl:sequence select="if ($node instance of document-node()) then '/'
        else string-join(for $n in $node/ancestor-or-self::node()[parent::node()] return pfi:step($n), '')"/>
  </xsl:function>
  <xsl:function name="pfi:step" as="xs:string">
    <xsl:param name="n" as="node()"/>
    <xsl:sequence select="
        if ($n instance of attribute()) then concat('/@', name($n))
        else if ($n instance of element()) then concat('/*:', local-name($n), '[',
            count($n/preceding-sibling::*[local-name() = local-name($n)]) + 1, ']')
        else if ($n instance of text()) then concat('/text()[', count($n/preceding-sibling::text()) + 1, ']')
        else concat('/node()[', count($n/preceding-sibling::node()) + 1, ']')"/>
  </xsl:function>
</xsl:stylesheet>
"""

HrefRewriter = Callable[[str], str]


def generate_svrl_xslt(schema: etree._Element, base_uri: str, href_rewriter: HrefRewriter | None = None) -> bytes:
    """Return the XSLT 2.0 text validating against `schema`; `base_uri` anchors relative doc() calls."""
    return _Generator(schema, base_uri, href_rewriter or (lambda href: href)).run()


def _sch(name: str) -> str:
    return f"{{{SCH}}}{name}"


def _xsl(parent: etree._Element, instruction: str, **attrs: str) -> etree._Element:
    return etree.SubElement(parent, f"{{{XSL}}}{instruction}", {k.replace("_", "-"): v for k, v in attrs.items()})


def _avt_escape(text: str) -> str:
    """Literal text inside an attribute value template: braces must be doubled."""
    return text.replace("{", "{{").replace("}", "}}")


class _Generator:
    def __init__(self, schema: etree._Element, base_uri: str, href_rewriter: HrefRewriter):
        self.schema = schema
        self.base_uri = base_uri
        self.rewrite_href = href_rewriter
        self.abstract_rules = {r.get("id"): r for r in schema.iter(_sch("rule")) if r.get("abstract") == "true"}
        self.global_names: set[str] = set()
        self.named_abstract: set[str] = set()

    # -- whole stylesheet -------------------------------------------------------------------
    def run(self) -> bytes:
        root = etree.Element(f"{{{XSL}}}stylesheet", {"version": "2.0"}, nsmap=self._nsmap())
        root.set("{http://www.w3.org/XML/1998/namespace}base", self.base_uri)
        root.set("exclude-result-prefixes", " ".join(p for p in root.nsmap if p and p != "svrl"))
        _xsl(root, "output", method="xml", indent="no", encoding="UTF-8")
        for fn in etree.fromstring(_PATH_FUNCTIONS):
            root.append(fn)
        self._global_lets(root)
        patterns = self._active_patterns()
        self._root_template(root, patterns)
        for index, pattern in enumerate(patterns):
            self._pattern_templates(root, pattern, index)
        written: set[str] = set()
        while self.named_abstract - written:  # abstract rules may extend other abstract rules
            rule_id = sorted(self.named_abstract - written)[0]
            written.add(rule_id)
            self._abstract_template(root, rule_id)
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

    def _nsmap(self) -> dict[str, str]:
        nsmap = {"xsl": XSL, "svrl": SVRL, "xs": XS, "pfi": PFI}
        for prefix, uri in self.schema.nsmap.items():
            if prefix and prefix not in _RESERVED_PREFIXES and uri != SCH:
                nsmap[prefix] = uri
        for ns in self.schema.iter(_sch("ns")):
            if ns.get("prefix") not in _RESERVED_PREFIXES:
                nsmap[ns.get("prefix")] = ns.get("uri")
        return nsmap

    def _active_patterns(self) -> list[etree._Element]:
        patterns = [p for p in self.schema.findall(_sch("pattern")) if p.get("abstract") != "true"]
        phase_id = self.schema.get("defaultPhase")
        phase = next((p for p in self.schema.findall(_sch("phase")) if p.get("id") == phase_id), None)
        if phase is None or phase_id == "#ALL":
            return patterns
        active = {a.get("pattern") for a in phase.findall(_sch("active"))}
        return [p for p in patterns if p.get("id") in active]

    def _global_lets(self, root: etree._Element) -> None:
        lets = list(self.schema.findall(_sch("let")))
        phase_id = self.schema.get("defaultPhase")
        for phase in self.schema.findall(_sch("phase")):
            if phase.get("id") == phase_id:
                lets += phase.findall(_sch("let"))
        for pattern in self.schema.findall(_sch("pattern")):
            lets += pattern.findall(_sch("let"))
        for let in lets:
            if let.get("name") not in self.global_names:  # duplicates would be a static error
                self.global_names.add(let.get("name"))
                self._variable(root, let)

    def _root_template(self, root: etree._Element, patterns: list[etree._Element]) -> None:
        template = _xsl(root, "template", match="/")
        attrs = {"title": _avt_escape(self._title(self.schema)), "schemaVersion": self.schema.get("schemaVersion", "")}
        output = etree.SubElement(template, f"{{{SVRL}}}schematron-output", attrs)
        for index, pattern in enumerate(patterns):
            active = etree.SubElement(output, f"{{{SVRL}}}active-pattern")
            if pattern.get("id"):
                active.set("id", _avt_escape(pattern.get("id")))
            name = self._title(pattern) or pattern.get("id")
            if name:
                active.set("name", _avt_escape(name))
            _xsl(output, "apply-templates", select="/", mode=f"M{index}")

    @staticmethod
    def _title(element: etree._Element) -> str:
        title = element.find(_sch("title"))
        return " ".join("".join(title.itertext()).split()) if title is not None else ""

    # -- patterns and rules -----------------------------------------------------------------
    def _pattern_templates(self, root: etree._Element, pattern: etree._Element, index: int) -> None:
        mode = f"M{index}"
        rules = [r for r in pattern.findall(_sch("rule")) if r.get("abstract") != "true"]
        children = "@*|*" if any(_context_visits_attributes(r.get("context", "")) for r in rules) else "*"
        for position, rule in enumerate(rules):
            self._rule_template(root, rule, mode, 100000 - position, children)
        _xsl(root, "template", match="text()", priority="-1", mode=mode)
        fallback = _xsl(root, "template", match="@*|node()", priority="-2", mode=mode)
        _xsl(fallback, "apply-templates", select=children, mode=mode)

    def _rule_template(self, root, rule, mode: str, priority: int, children: str) -> None:
        context = self._xpath(rule.get("context"))
        template = _xsl(root, "template", match=context, priority=str(priority), mode=mode)
        fired = etree.SubElement(template, f"{{{SVRL}}}fired-rule", {"context": _avt_escape(context)})
        for name in ("id", "role", "flag"):
            if rule.get(name):
                fired.set(name, _avt_escape(rule.get(name)))
        self._rule_body(template, rule)
        _xsl(template, "apply-templates", select=children, mode=mode)

    def _rule_body(self, parent: etree._Element, rule: etree._Element) -> None:
        """Lets, asserts and reports in schema order; `extends` is expanded where it stands."""
        for child in rule:
            tag = etree.QName(child).localname if isinstance(child.tag, str) else None
            if tag == "let":
                self._variable(parent, child)
            elif tag in ("assert", "report"):
                self._check(parent, child, rule)
            elif tag == "extends":
                self._extends(parent, child.get("rule"))

    def _extends(self, parent: etree._Element, rule_id: str) -> None:
        abstract = self.abstract_rules.get(rule_id)
        if abstract is None:
            raise ValueError(f"extends refers to unknown abstract rule {rule_id!r}")
        if self._self_contained(abstract):
            self.named_abstract.add(rule_id)
            _xsl(parent, "call-template", name=f"pfi:abstract-{_ncname(rule_id)}")
        else:
            self._rule_body(parent, abstract)

    def _abstract_template(self, root: etree._Element, rule_id: str) -> None:
        template = _xsl(root, "template", name=f"pfi:abstract-{_ncname(rule_id)}")
        self._rule_body(template, self.abstract_rules[rule_id])

    def _self_contained(self, rule: etree._Element, seen: frozenset = frozenset()) -> bool:
        """True if the abstract rule only uses its own, range-bound or global variables."""
        declared = {let.get("name") for let in rule.iter(_sch("let"))} | self.global_names
        for element in rule.iter():
            for attr in ("test", "value", "select", "path"):
                expression = element.get(attr)
                if expression and _free_variables(expression) - declared:
                    return False
        nested = [e.get("rule") for e in rule.iter(_sch("extends"))]
        return all(
            r in self.abstract_rules and r not in seen and self._self_contained(self.abstract_rules[r], seen | {r})
            for r in nested
        )

    # -- assertions and messages ------------------------------------------------------------
    def _check(self, parent: etree._Element, check: etree._Element, rule: etree._Element) -> None:
        test = self._xpath(check.get("test"))
        is_assert = etree.QName(check).localname == "assert"
        if is_assert:
            choose = _xsl(parent, "choose")
            _xsl(choose, "when", test=test)
            container = _xsl(choose, "otherwise")
            name = "failed-assert"
        else:
            container = _xsl(parent, "if", test=test)
            name = "successful-report"
        result = etree.SubElement(container, f"{{{SVRL}}}{name}", {"test": _avt_escape(test)})
        for attr in ("id", "role", "flag", "see"):
            value = check.get(attr) or (rule.get(attr) if attr in ("role", "flag") else None)
            if value:
                result.set(attr, _avt_escape(value))
        _xsl(result, "attribute", name="location", select="pfi:path(.)")
        text = etree.SubElement(result, f"{{{SVRL}}}text")
        self._message(text, check)

    def _message(self, target: etree._Element, source: etree._Element) -> None:
        if source.text:
            _xsl(target, "text").text = source.text
        for child in source:
            if isinstance(child.tag, str):
                self._message_element(target, child)
            if child.tail:
                _xsl(target, "text").text = child.tail

    def _message_element(self, target: etree._Element, element: etree._Element) -> None:
        tag = etree.QName(element).localname
        if tag == "value-of":
            _xsl(target, "value-of", select=self._xpath(element.get("select")))
        elif tag == "name":
            _xsl(target, "value-of", select=f"name({self._xpath(element.get('path', '.'))})")
        else:  # emph, dir, span, foreign: keep the text content
            self._message(target, element)

    # -- helpers ----------------------------------------------------------------------------
    def _variable(self, parent: etree._Element, let: etree._Element) -> None:
        if let.get("value") is not None:
            _xsl(parent, "variable", name=let.get("name"), select=self._xpath(let.get("value")))
        else:
            variable = _xsl(parent, "variable", name=let.get("name"))
            variable.text = let.text
            for child in let:
                variable.append(child.__copy__())

    def _xpath(self, expression: str | None) -> str:
        """Rewrite literal doc()/document() hrefs (value-set overlay); leave the rest untouched."""
        if not expression:
            return expression or ""
        return _DOC_CALL.sub(
            lambda m: f"{m.group(1)}({m.group(2)}{self.rewrite_href(m.group(3))}{m.group(2)})", expression
        )


def _free_variables(expression: str) -> set[str]:
    bound = {a or b for a, b in _BOUND_VAR.findall(expression)}
    return {name for name in _VAR_REF.findall(expression) if not name.isdigit()} - bound


def _context_visits_attributes(context: str) -> bool:
    """True if a rule context can match attribute nodes (an '@' outside predicates)."""
    depth = 0
    for char in context:
        depth += char == "["
        depth -= char == "]"
        if char == "@" and depth == 0:
            return True
    return "attribute::" in context


def _ncname(text: str) -> str:
    return re.sub(r"[^\w.\-]", "_", text)
