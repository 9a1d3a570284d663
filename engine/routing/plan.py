"""Evaluate the routes for one message: a pure computation producing a Plan.

Runs in a worker thread (full parsing, XSLT and CDA checks stay off the reactor); the Plan is
then written to the journal in one transaction (engine.journal.deliveries.apply_plan).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.config.routes import Route, Step, as_list
from engine.errors import EngineError, ValidationError
from engine.routing.context import MessageContext
from engine.journal.plans import NewDelivery, Plan
from engine.routing.match import field_matches, matches
from engine.routing import transform


@dataclass
class Environment:
    """What steps need besides the message: channel settings, the config root, validators."""

    channels: dict
    root: Path
    cda_validator: object | None = None  # callable(bytes) -> list[str] of errors
    patients: object | None = None  # engine.patients.PatientRegistry
    #: the engine's clock (seconds): a ZAM's timestamp follows it, like every other time in routing
    now: Callable[[], float] = time.time


def plan_message(routes: list[Route], ctx: MessageContext, env: Environment) -> Plan:
    plan = Plan(ctx.uid)
    matched = False
    for route in routes:
        try:
            if not matches(route.match, ctx):
                continue
        except EngineError as exc:
            plan.events.append(("invalid", f"route {route.name}: cannot read message: {exc}"))
            plan.state = "invalid"
            return plan
        matched = True
        run_steps(route, route.steps, ctx, ctx.raw, env, plan)
        if route.final:
            break
    if not matched:
        plan.state = "unrouted"
        plan.events.append(("unrouted", "no route matches this message"))
    return plan


def run_steps(
    route: Route, steps: list[Step], ctx: MessageContext, payload: bytes, env: Environment, plan: Plan
) -> None:
    """Run `steps` in order; a failing validate/transform/gate or a stop ends this route."""
    for step in steps:
        try:
            payload, go_on = _run_step(route, step, ctx, payload, env, plan)
        except EngineError as exc:
            plan.state = "invalid"
            plan.events.append(("invalid", f"route {route.name} step {step.label}: {exc}"))
            if step.on_failure:
                _run_on_failure(route, step, ctx, env, plan, exc)
            return
        if not go_on:
            return


def _run_step(route, step: Step, ctx, payload: bytes, env: Environment, plan: Plan):
    action = step.action
    if action == "validate":
        _validate(step.validate_, ctx, env)
        plan.events.append(("validated", f"route {route.name} step {step.label}"))
    elif action == "transform":
        payload = _transform(step, payload, env, ctx)
    elif action == "gate":
        if not all(field_matches(ctx, path, wanted) for path, wanted in step.gate.when.items()):
            plan.state = "held" if plan.state == "routed" else plan.state
            plan.events.append(("held", f"route {route.name} step {step.label}: {step.gate.reason}"))
            return payload, False
    elif action == "stop":
        plan.state = "filtered" if plan.state == "routed" else plan.state
        plan.events.append(("filtered", f"route {route.name} step {step.label}: {step.stop}"))
        return payload, False
    elif action == "deliver":
        _deliver(route, step, ctx, payload, env, plan)
    elif action == "patients":
        _update_patient(ctx, env, plan)
    elif action == "zam":
        plan.zams.append((step.zam.kind, step.zam.to, route.name))
    return payload, True


def _run_on_failure(
    route: Route, step: Step, ctx: MessageContext, env: Environment, plan: Plan, error: EngineError
) -> None:
    """A refused document still gets its answer: the step's on_failure steps (a ZAM failure to the
    creator, an alert delivery) run with the refusal as the reason."""
    from engine.routing.zamstep import build_zam_delivery

    follow = Plan(plan.message_uid, state=None)
    run_steps(route, step.on_failure, ctx, ctx.raw, env, follow)
    refusal = (getattr(error, "app_code", None) or "DOCUMENT_REFUSED", str(error), False)
    zams = [build_zam_delivery(z, refusal, ctx, env.now()) for z in follow.zams]
    plan.deliveries += follow.deliveries + [z for z in zams if z is not None]
    plan.events += follow.events


def _validate(kind: str, ctx: MessageContext, env: Environment) -> None:
    from engine.docrequest import check_consistency, parse_document_request
    from engine.docrequest.errors import RequestError

    if kind == "drimbox":
        return _check_for_drimbox(ctx)
    try:
        request = parse_document_request(ctx.message)
    except RequestError as exc:
        raise _coded(f"document request refused: {exc.error.message}", exc.error.app_code) from exc
    errors = [e for e in check_consistency(request) if e.severity in ("E", "F")]
    if errors:
        raise _coded("; ".join(f"{e.code} {e.app_code} {e.message}".strip() for e in errors), errors[0].app_code)
    if kind == "cda":
        if env.cda_validator is None:  # never pass a document the step was meant to check
            raise _coded("CDA not validated: no CDA validator configured (cda_kit)", "CDA_NOT_VALIDATED")
        for document in request.documents:
            problems = env.cda_validator(document.content)
            if problems:
                raise _coded("CDA invalid: " + "; ".join(problems[:5]), "CDA_INVALID")


def _check_for_drimbox(ctx: MessageContext) -> None:
    """`validate: drimbox`: the report carries what a DRIMbox needs, or a clear refusal naming
    what is missing (instead of a KOS the DRIMbox cannot build)."""
    from engine.docrequest.drimbox import missing_for_drimbox
    from engine.docrequest.errors import RequestError

    try:
        missing = missing_for_drimbox(ctx.message)
    except RequestError as exc:
        raise _coded(f"document request refused: {exc.error.message}", exc.error.app_code) from exc
    if missing:
        raise _coded("not sendable to a DRIMbox, missing: " + "; ".join(missing), "DRIMBOX_DATA_MISSING")


def _coded(message: str, app_code: str | None) -> ValidationError:
    """A validation error carrying the application code a ZAM failure reports."""
    error = ValidationError(message)
    error.app_code = app_code
    return error


def _update_patient(ctx: MessageContext, env: Environment, plan: Plan) -> None:
    """PAM.fr identity and consent into the registry; runs in the dispatcher's order."""
    from engine.patients import read_adt

    if env.patients is None:
        raise ValidationError("no patient registry configured")
    record = env.patients.apply(read_adt(ctx.message))
    if record.ins is not None and record.identity_status == "VALI":
        plan.qualified_identity = (record.ins.value, record.ipp.value, *(m.old_ipp.value for m in record.merges))
        plan.qualified_by = f"the PAM.fr update {ctx.header.message_type} {ctx.header.control_id}".strip()
    plan.events.append(
        (
            "patient-updated",
            f"registry updated (feeding consent: {'opposed' if record.opposed_to_feeding else 'not opposed'})",
        )
    )


def _transform(step: Step, payload: bytes, env: Environment, ctx: MessageContext) -> bytes:
    codec = ctx.header.codec
    if step.transform.map is not None:
        return transform.apply_map(payload, step.transform.map, codec)
    return transform.apply_xslt(payload, env.root / step.transform.xslt, codec)


def _deliver(route, step: Step, ctx: MessageContext, payload: bytes, env: Environment, plan: Plan) -> None:
    action, doc_id, replaced = ctx.document_ids
    for destination in as_list(step.deliver.to):
        key_path = step.deliver.key or getattr(env.channels.get(destination), "queue_key", None) or "PID-3.1"
        plan.deliveries.append(
            NewDelivery(
                route=route.name,
                step=step.label,
                destination=destination,
                fifo_key=ctx.get(key_path),
                not_before=ctx.received_at + step.deliver.delay,
                payload=None if payload is ctx.raw else payload,
                doc_id=doc_id,
                action=action,
                replaced_id=replaced,
            )
        )
