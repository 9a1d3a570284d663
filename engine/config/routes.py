"""routes.yaml: what arrives where goes where, in which order, on what condition.

    routes:
      - name: reports-from-ris          # unique
        match:                          # every key optional; a list means "any of"
          channel: ris-documents        # inbound channel(s)
          type: [ORU^R01, MDM]          # MSH-9 code^trigger, or code alone
          sender: RIS                   # MSH-3.1   (also: facility MSH-4.1, receiver MSH-5.1,
          version: "2.5"                #            receiver_facility MSH-6.1; version MSH-12.1)
          fields: {"OBX[code=DESTDMP]-5.1": "Y"}
        final: false                    # true: later routes are not tried for this message
        steps:                          # run in order; each may have a label (unique in the route)
          - validate: document-request  # or: cda
          - gate: {when: {"PID-32": VALI}, reason: INS not qualified}
          - transform: {map: {"MSH-5": RIS, "MSH-6": CHU}}   # or {xslt: mappings/x.xsl}
          - deliver: {to: [ris-out], delay: 10m, key: "PID-3.1"}
            on_success: [ ...steps ]    # after every destination of this step took it
            on_failure: [ ...steps ]    # when one dead-lettered
          - stop: reason                # record as filtered and stop (later steps unreachable)

Validation reports every problem with file:line:col; cross-references (channels, mapping files,
HL7 paths) are checked after the per-route pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.config.problems import Problems
from engine.config.types import Duration
from engine.config.yamlfile import YamlSyntaxError, load_yaml, position

StrList = Union[str, list[str]]
ACTIONS = ("validate", "transform", "gate", "deliver", "stop", "patients", "zam")


def as_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class Match(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: StrList | None = None
    type: StrList | None = None
    sender: StrList | None = None
    facility: StrList | None = None
    receiver: StrList | None = None
    receiver_facility: StrList | None = None
    version: StrList | None = None
    fields: dict[str, StrList] = Field(default_factory=dict)


class Gate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    when: dict[str, StrList] = Field(description="HL7 path -> accepted value(s); all must hold")
    reason: str = "gate condition not met"


class Transform(BaseModel):
    model_config = ConfigDict(extra="forbid")
    xslt: str | None = None
    map: dict[str, str] | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.xslt is None) == (self.map is None):
            raise ValueError("transform takes exactly one of `xslt` or `map`")
        return self


class Deliver(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: StrList
    delay: Duration = 0.0
    key: str | None = Field(default=None, description="HL7 path of the FIFO key (default: the destination's)")


class Zam(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["Z01", "Z02", "Z03"] = "Z01"
    to: str = Field(description="channel that carries business acks back to the creator")


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str | None = None
    validate_: Literal["document-request", "cda", "drimbox"] | None = Field(default=None, alias="validate")
    transform: Transform | None = None
    gate: Gate | None = None
    deliver: Deliver | None = None
    stop: str | None = None
    patients: Literal["update"] | None = None
    zam: Zam | None = None
    on_success: list["Step"] = Field(default_factory=list)
    on_failure: list["Step"] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_action(self):
        present = [a for a in ACTIONS if getattr(self, "validate_" if a == "validate" else a) is not None]
        if len(present) != 1:
            raise ValueError(f"a step takes exactly one of {', '.join(ACTIONS)} (found: {present or 'none'})")
        if self.on_success and self.deliver is None:
            raise ValueError("on_success belongs to a deliver step")
        if self.on_failure and self.deliver is None and self.validate_ is None:
            raise ValueError("on_failure belongs to a deliver or validate step")
        return self

    @property
    def action(self) -> str:
        return next(a for a in ACTIONS if getattr(self, "validate_" if a == "validate" else a) is not None)


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    description: str = ""
    match: Match = Field(default_factory=Match)
    final: bool = False
    steps: list[Step]

    def find_step(self, label: str) -> Step | None:
        return _find(self.steps, label)


def _find(steps: list[Step], label: str) -> Step | None:
    for step in steps:
        if step.label == label:
            return step
        found = _find(step.on_success, label) or _find(step.on_failure, label)
        if found:
            return found
    return None


def label_steps(route: Route) -> None:
    """Give unlabelled steps a stable label (`deliver-2`) so that queued work can find them."""

    def walk(steps, prefix):
        for i, step in enumerate(steps, 1):
            step.label = step.label or f"{prefix}{step.action}-{i}"
            walk(step.on_success, f"{step.label}/ok/")
            walk(step.on_failure, f"{step.label}/ko/")

    walk(route.steps, "")


def load_routes(path: Path, channels: dict, root: Path, problems: Problems) -> list[Route]:

    if not path.exists():
        return []
    try:
        tree = load_yaml(path)
    except YamlSyntaxError as exc:
        problems.add(path, exc.position, str(exc))
        return []
    items = tree.get("routes") if isinstance(tree, dict) else None
    if tree is None or items is None and isinstance(tree, dict) and "routes" in tree:
        return []
    if not isinstance(items, list):
        problems.add(path, position(tree), "routes.yaml must be a mapping with a `routes:` list")
        return []
    routes = [r for r in (_load_route(item, path, problems) for item in items) if r is not None]
    _check_routes(routes, channels, root, path, problems)
    result = []
    for route, _ in routes:
        route.steps = [s for s in route.steps if s is not None]
        label_steps(route)
        result.append(route)
    return result


def _load_route(item, path: Path, problems: Problems):
    """Validate the route and each step on its own, so one bad step hides no other problem."""
    from engine.config.load import validate_model

    if not isinstance(item, dict):
        problems.add(path, position(item), "a route must be a mapping")
        return None
    step_trees = item.get("steps")
    data = dict(item)
    data["steps"] = []
    route = validate_model(Route, data, path, item, problems)
    if route is None:
        return None
    if not isinstance(step_trees, list) or not step_trees:
        problems.add(
            path,
            position(item, "steps") if "steps" in item else position(item),
            f"route {route.name!r}: `steps` must be a non-empty list",
        )
        return None
    route.steps = [validate_model(Step, t, path, t, problems) if isinstance(t, dict) else None for t in step_trees]
    return route, item


def _check_routes(routes, channels: dict, root: Path, path: Path, problems: Problems) -> None:
    names: set[str] = set()
    for route, tree in routes:
        where = position(tree, "name")
        if route.name in names:
            problems.add(path, where, f"route {route.name!r}: duplicate route name")
        names.add(route.name)
        _check_match(route, tree, channels, path, problems)
        _check_steps(route, route.steps, tree.get("steps"), channels, root, path, problems, set())


def _check_match(route: Route, tree, channels: dict, path: Path, problems: Problems) -> None:
    match_tree = tree.get("match") or tree
    for name in as_list(route.match.channel):
        channel = channels.get(name)
        if channel is None or channel.direction == "out":
            problems.add(
                path,
                position(match_tree, "channel"),
                f"route {route.name!r}: match.channel {name!r} is not a configured inbound channel",
            )
    for hl7_path in route.match.fields:
        _check_path(hl7_path, route, match_tree.get("fields") or match_tree, path, problems)


def _check_path(hl7_path: str, route: Route, tree, path: Path, problems: Problems) -> None:
    from engine.hl7.path import compile_path

    try:
        compile_path(hl7_path)
    except ValueError as exc:
        problems.add(
            path,
            position(tree, hl7_path) if hasattr(tree, "lc") else (1, 1),
            f"route {route.name!r}: bad HL7 path {hl7_path!r}: {exc}",
        )


def _check_steps(route, steps, trees, channels, root, path, problems, labels: set) -> None:
    trees = trees or []
    stopped = False
    for step, tree in zip(steps, trees):
        if step is None:
            continue
        where = position(tree)
        if stopped:
            problems.add(path, where, f"route {route.name!r}: step unreachable after a `stop` step")
        if step.label:
            if step.label in labels:
                problems.add(
                    path, position(tree, "label"), f"route {route.name!r}: duplicate step label {step.label!r}"
                )
            labels.add(step.label)
        _check_step(route, step, tree, channels, root, path, problems)
        _check_steps(route, step.on_success, tree.get("on_success"), channels, root, path, problems, labels)
        _check_steps(route, step.on_failure, tree.get("on_failure"), channels, root, path, problems, labels)
        stopped = stopped or step.stop is not None


def _check_step(route, step: Step, tree, channels, root: Path, path, problems) -> None:
    if step.deliver:
        for name in as_list(step.deliver.to):
            channel = channels.get(name)
            if channel is None:
                problems.add(
                    path, position(tree.get("deliver"), "to"), f"route {route.name!r}: unknown channel {name!r}"
                )
            elif channel.direction == "in":
                problems.add(
                    path,
                    position(tree.get("deliver"), "to"),
                    f"route {route.name!r}: channel {name!r} ({channel.type}) cannot be a destination",
                )
        if step.deliver.key:
            _check_path(step.deliver.key, route, tree.get("deliver"), path, problems)
    if step.zam and step.zam.to not in channels:
        problems.add(path, position(tree.get("zam"), "to"), f"route {route.name!r}: unknown channel {step.zam.to!r}")
    if step.gate:
        for hl7_path in step.gate.when:
            _check_path(hl7_path, route, tree.get("gate").get("when"), path, problems)
    if step.transform and step.transform.xslt and not (root / step.transform.xslt).is_file():
        problems.add(
            path,
            position(tree.get("transform"), "xslt"),
            f"route {route.name!r}: mapping file {step.transform.xslt!r} not found",
        )
    if step.transform and step.transform.map:
        for hl7_path in step.transform.map:
            _check_path(hl7_path, route, tree.get("transform").get("map"), path, problems)


def routes_summary(routes: list[Route]) -> list[dict[str, Any]]:
    return [{"name": r.name, "steps": [s.label for s in r.steps]} for r in routes]
