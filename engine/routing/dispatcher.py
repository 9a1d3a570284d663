"""The dispatcher: claims journaled messages in arrival order, plans their routes, writes the
result, and runs follow-up steps when deliveries finish. Destination workers send the queued
deliveries, one at a time per destination, in FIFO order per key."""

from __future__ import annotations

import collections
import random
import time

import structlog
from twisted.internet import defer, threads

from engine.connectors.base import Action, Outcome, lane_of
from engine.journal import deliveries as queue
from engine.retry import attempts_exhausted, backoff_delay
from engine.routing.context import MessageContext
from engine.routing.plan import Environment, NewDelivery, Plan, plan_message, run_steps

log = structlog.get_logger("engine.routing")

POLL_SECONDS = 0.25
FOLLOW_UP_SWEEP = 60.0  # seconds between looks for follow-ups left due (a failed apply)
BATCH = 200
CLAIM_BATCH, CLAIM_BATCH_ROUTING_PROCESS = 64, 256
RECHECK_SECONDS = 0.02


class Dispatcher:
    def __init__(
        self,
        journal,
        routes,
        env: Environment,
        clock,
        connectors: dict,
        retry_settings: dict,
        node: str = "local",
        rng: random.Random | None = None,
    ):
        self.journal, self.routes, self.env, self.clock = journal, routes, env, clock
        self.node = node
        self.workers = {
            name: DestinationWorker(self, name, c, retry_settings.get(name), rng or random.Random())
            for name, c in connectors.items()
        }
        self._busy = False
        self._again = False
        self._timer = None
        self._running = False
        self.follow_ups_in_flight = 0  # on_success/on_failure steps being planned (pfi test waits)
        self._cycle_waiters: list[defer.Deferred] = []  # stop() waits for the cycle in progress
        self.route_channels = routed_channels(routes)
        #: (route, step, kind) of the deliver steps with on_success / on_failure steps: only their
        #: follow-ups are made durable when due (and run)
        self.follow_up_steps = follow_up_steps(routes)
        self._following: set[int] = set()  # deliveries whose follow-up runs now (the sweep skips them)
        self.metrics = None  # EngineMetrics when the engine sets it: delivery outcomes counted
        #: successful sends per destination since the last `flush_summary` (one line every 10 s
        #: instead of one per message; other outcomes are logged at once)
        self.delivered: collections.Counter[str] = collections.Counter()
        #: deliveries a worker claims at once: more in the routing process, whose journal writer
        #: answers no intake (256 there: +7 % delivered, -5 % CPU per message, interleaved runs;
        #: no gain in one process, where a longer claim delays intake's group commits)
        self.claim_limit = CLAIM_BATCH

    def flush_summary(self) -> None:
        """One line per destination with the sends that succeeded since the last call."""
        for destination, done in sorted(self.delivered.items()):
            log.info("delivery.summary", destination=destination, done=done)
        self.delivered.clear()

    # -- lifecycle -------------------------------------------------------------------------
    # The engine's service tree calls these in order (engine/service.py); `start` and `stop` do
    # all of it for a dispatcher used alone (tests, benchmarks).
    async def reset_in_flight(self) -> None:
        """Sends this node left `sending` (a crash) go back to the queue before any claim."""
        await self.journal.submit(lambda conn, store: queue.reset_in_flight(conn, self.node, self.journal.dialect))

    def start_planning(self) -> None:
        self._running = True
        self.kick()

    async def stop_planning(self) -> None:
        """No new planning cycle; the one in progress writes its result first."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._busy:
            finished: defer.Deferred = defer.Deferred()
            self._cycle_waiters.append(finished)
            await finished

    async def resume_follow_ups(self) -> None:
        """Follow-ups this node made due but never applied (it stopped between the finish of a
        delivery and its follow-up's plan: a crash, a power cut) run now, before any new work.
        The outcome is rebuilt from the delivery row and its mark (a failure's code, label and
        origin were recorded with it, so its ZAM says what it would have said at once)."""
        pending = await self.journal.submit(
            lambda conn, store: queue.pending_follow_ups(conn, self.node), logged=True, indexed_only=True
        )
        pending = [row for row in pending if row[0].id not in self._following]  # not the ones running
        if pending:
            log.warning("routing.follow_ups_resumed", count=len(pending))
        for delivery, kind, state, last_error, error in pending:
            await self.run_follow_ups([(delivery, kind, _resumed_outcome(state, last_error, error))])

    async def run_follow_ups(self, due: list[tuple[queue.Delivery, str, Outcome]]) -> None:
        """Run follow-ups one after the other; one that fails (a journal write refused, a defect)
        stays due in the journal and is tried again by the next `resume_follow_ups` (every
        FOLLOW_UP_SWEEP seconds and at start), and never keeps the others from running."""
        self._following.update(delivery.id for delivery, _, _ in due)
        try:
            for delivery, kind, outcome in due:
                try:
                    await self.follow_up(delivery, kind, outcome)
                except Exception as exc:  # noqa: BLE001 - kept due: the sweep tries it again
                    log.error(
                        "routing.follow_up_deferred",
                        message_id=delivery.message_uid,
                        delivery=delivery.id,
                        error_type=type(exc).__name__,
                    )
        finally:
            self._following.difference_update(delivery.id for delivery, _, _ in due)

    async def start(self) -> None:
        await self.reset_in_flight()
        await self.resume_follow_ups()
        for worker in self.workers.values():
            worker.wake()
        self.start_planning()

    async def stop(self) -> None:
        await self.stop_planning()
        for worker in self.workers.values():
            await worker.stop()

    # -- dispatching -------------------------------------------------------------------------
    def kick(self, *_) -> None:
        """New messages may be waiting: dispatch soon (coalesced)."""
        if not self._running:
            return
        if self._busy:
            self._again = True
            return
        defer.Deferred.fromCoroutine(self._cycle())

    async def _cycle(self) -> None:
        self._busy = True
        try:
            while self._running:
                batch = await self.journal.claim_received(BATCH, self.route_channels)
                if not batch:
                    break
                plans = await threads.deferToThread(self._plan_all, batch)
                # NORMAL sync is enough: a routing result lost in a power failure is recomputed from
                # the message, which stays `received` until its plan is written (at-least-once).
                busy, now, names = self._busy_destinations(), self.clock.seconds(), list(self.workers)
                touched = await self.journal.submit(
                    lambda conn, store: _apply_all(self.journal, conn, plans, self.node, busy, now, names),
                    logged=True,
                    indexed_only=True,
                )
                self.wake(touched)
        except Exception as exc:  # a journal failure: keep the engine up and try again later
            log.exception("routing.dispatch_failed", error=str(exc))
        finally:
            self._busy = False
            waiters, self._cycle_waiters = self._cycle_waiters, []
            for finished in waiters:
                finished.callback(None)
            self._schedule_poll()

    def _schedule_poll(self) -> None:
        if not self._running:
            return
        if self._again:
            self._again = False
            self.kick()
            return
        if self._timer is None or not self._timer.active():
            self._timer = self.clock.callLater(POLL_SECONDS, self.kick)

    def _plan_all(self, batch) -> list[Plan]:
        plans, contexts = [], []
        for uid, channel, received_at, raw in batch:
            if raw is None:  # no route names its channel
                plans.append(Plan(uid, state="unrouted", events=[("unrouted", "no route matches this message")]))
                continue
            ctx = MessageContext(uid, channel, raw, received_at)
            try:
                plans.append(plan_message(self.routes, ctx, self.env))
            except Exception as exc:  # never lose the message: it goes to dead letter with the reason
                plans.append(Plan(uid, state="invalid", events=[("invalid", f"routing failed: {exc}")]))
            contexts.append(ctx)
        facts = {f.uid: f for f in statistics_facts(contexts, self.env) if f is not None}
        for plan in plans:
            plan.facts = facts.get(plan.message_uid)
        return plans

    def _busy_destinations(self) -> set[str]:
        return {name for name, worker in self.workers.items() if worker.busy}

    def wake(self, destinations) -> None:
        """New work for these destinations: their workers look at their queues now."""
        for name in set(destinations):
            if name in self.workers:
                self.workers[name].wake()

    # -- follow-ups ------------------------------------------------------------------------
    async def follow_up(self, delivery: queue.Delivery, kind: str, outcome: Outcome) -> None:
        """Run a delivery's on_success/on_failure steps (planned in a thread: they may validate)."""
        self.follow_ups_in_flight += 1
        try:
            await self._follow_up(delivery, kind, outcome)
        finally:
            self.follow_ups_in_flight -= 1

    async def _follow_up(self, delivery: queue.Delivery, kind: str, outcome: Outcome) -> None:
        route = next((r for r in self.routes if r.name == delivery.route), None)
        step = route.find_step(delivery.step) if route else None
        steps = (step.on_success if kind == "on_success" else step.on_failure) if step else []
        if not steps:  # only a resumed one whose route lost its steps since: no longer due
            await self.journal.submit(lambda conn, store: queue.follow_up_done(conn, delivery.id), indexed_only=True)
            return
        message = await threads.deferToThread(self.journal.load_message, delivery.message_uid)
        ctx = MessageContext(message.uid, message.channel, message.raw, self.clock.seconds())
        plan = Plan(message.uid, state=None)
        payload = ctx.raw
        if delivery.action == "initial" and ctx.document_ids[0] == "replace":
            # The DMP got this replace as the first version (its original never left): what comes
            # after the DMP (the DRIMbox) gets a new document too, not a replace of one it never had.
            from engine.docrequest.asinitial import as_initial

            payload = as_initial(ctx.raw)
        try:
            await threads.deferToThread(run_steps, route, steps, ctx, payload, self.env, plan)
        except Exception as exc:  # noqa: BLE001 - a defect must not take the batch's other follow-ups
            # with it (they would never run: their deliveries are already recorded as finished).
            log.error(
                "routing.follow_up_failed", message_id=message.uid, route=route.name, error_type=type(exc).__name__
            )
            plan.events.append(("invalid", f"route {route.name} step {delivery.step} {kind} failed: {exc}"))
        if payload is not ctx.raw:
            for new in plan.deliveries:
                new.action, new.replaced_id = "initial", ""
        # A follow-up never moves the message's state (a failing validate or a gate in on_success
        # would otherwise drop the whole plan: its events and ZAMs); what happened is in the events.
        plan.state = None
        zams = [self._zam(kind, outcome, ctx, z) for z in plan.zams]
        plan.deliveries += [z for z in zams if z is not None]
        busy, now, names = self._busy_destinations(), self.clock.seconds(), list(self.workers)
        touched = await self.journal.submit(
            lambda conn, store: _apply_follow_up(self.journal, conn, plan, delivery.id, self.node, busy, now, names),
            indexed_only=True,
        )
        self.wake(touched)

    def _zam(self, kind: str, outcome: Outcome, ctx: MessageContext, zam) -> NewDelivery | None:
        from engine.routing.zamstep import build_zam_delivery

        error = None if kind == "on_success" else outcome.error()
        return build_zam_delivery(zam, error, ctx, self.clock.seconds())


def routed_channels(routes) -> frozenset | None:
    """The channels some route names (None when a route matches any channel): messages of other
    channels are unrouted without reading their payload."""
    names: set[str] = set()
    for route in routes:
        channel = route.match.channel
        if channel is None:
            return None
        names.update([channel] if isinstance(channel, str) else channel)
    return frozenset(names)


def _resumed_outcome(state: str, last_error: str, error) -> Outcome:
    """The outcome a resumed follow-up sees: its failure as recorded with the mark, or (marks
    written before failures were kept) the delivery's state and last error."""
    if error is not None:
        code, label, local = error
        return Outcome(Action.DEAD, label, code, local)
    return Outcome(Action.DONE if state == queue.DONE else Action.DEAD, last_error or "resumed")


def follow_up_steps(routes) -> frozenset[tuple[str, str, str]]:
    """(route, step label, kind) of every deliver step, at any depth, with follow-up steps."""
    found: set[tuple[str, str, str]] = set()

    def visit(route, steps) -> None:
        for step in steps:
            for kind, follow in (("on_success", step.on_success), ("on_failure", step.on_failure)):
                if follow and step.deliver is not None:
                    found.add((route.name, step.label, kind))
                visit(route, follow)

    for route in routes:
        visit(route, route.steps)
    return frozenset(found)


def _apply_follow_up(journal, conn, plan: Plan, delivery_id: int, node: str, busy, now: float, names) -> list[str]:
    """A follow-up's plan with the end of its due mark, in one transaction, and only while it is
    still due: applied once, whatever runs it twice."""
    if not queue.follow_up_done(conn, delivery_id):
        return []
    return _apply_all(journal, conn, [plan], node, busy, now, names)


def statistics_facts(contexts: list[MessageContext], env: Environment) -> list:
    """What the programme statistics count of these messages (engine/stats), from the parse
    routing made, with one registry look-up for the batch. Never fails the routing."""
    from engine.stats.facts import facts_for_all

    try:
        return facts_for_all(contexts, env.patients)
    except Exception as exc:  # noqa: BLE001 - a statistic is never worth a message
        log.error(
            "stats.classify_failed",
            messages=len(contexts),
            error=type(exc).__name__,
            detail="counted without the PAM.fr registry (identity from PID-32)",
        )
    try:
        return facts_for_all(contexts, None)
    except Exception as exc:  # noqa: BLE001
        log.error("stats.classify_failed", messages=len(contexts), error=type(exc).__name__)
        return []


def _apply_all(
    journal, conn, plans: list[Plan], node: str, busy: set[str] = frozenset(), now: float | None = None, destinations=()
) -> list[str]:
    from engine.journal import stats

    touched = queue.apply_plans(conn, plans, node, now)
    stats.record_messages(conn, [plan.facts for plan in plans if plan.facts is not None])
    for plan in plans:  # the DMP sends waiting for the identity of a patient just qualified try again
        if plan.qualified_identity:
            touched += queue.release_identity_holds(
                conn,
                plan.qualified_identity,
                destinations,
                node,
                now if now is not None else time.time(),
                cause=plan.qualified_by or "a PAM.fr update",
            )
    # A shared journal: wake the other nodes' workers only for destinations whose local worker is
    # already busy (more work than it takes); an idle one is woken locally and takes it at once.
    wanted = [d for d in touched if d in busy]
    if wanted:
        journal.notify_queued(conn, wanted)
    return touched


class DestinationWorker:
    """Sends one destination's queue: oldest due first, FIFO per key, retries with backoff."""

    def __init__(self, dispatcher: Dispatcher, name: str, connector, retry, rng: random.Random):
        self.dispatcher, self.name, self.connector = dispatcher, name, connector
        self.retry, self.rng = retry, rng
        self._running = False
        self._timer = None
        self._stopped = False
        #: the destination is paused (queue.pause_state): nothing is claimed until `pfi resume`
        self.paused = False
        self._counters: dict = {}  # outcome -> its child of the deliveries counter
        self._parts: set[defer.Deferred] = set()  # lane parts handed over and not finished
        self._unsent = 0  # deliveries claimed and handed to the lanes, not yet through
        self._has_moved = False
        self._move: defer.Deferred | None = None  # what the drain waits on (_moved fires it)

    @property
    def busy(self) -> bool:
        """Draining its queue right now (new work will be taken in this pass)."""
        return self._running

    def wake(self) -> None:
        if self._stopped:
            return
        if self._running:  # draining: take the new work as soon as there is room for it
            self._moved()
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._draining = defer.Deferred.fromCoroutine(self._drain())

    async def stop(self) -> None:
        """Finish the send in flight and record it (a clean stop re-sends nothing)."""
        self._stopped = True
        self._moved()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        draining = getattr(self, "_draining", None)
        if draining is not None and not draining.called:
            await draining
        close = getattr(self.connector, "close", None)
        if close is not None:
            await close()

    async def _drain(self) -> None:
        """Claim and send until the queue is empty. Claims run while the lanes send: each lane
        takes its share of a batch as soon as it is through with its earlier shares, so no lane
        waits for a claim nor for a slower lane; at most about two batches are claimed unsent."""
        self._running = True
        lanes: dict[int, defer.Deferred] = {}  # lane -> its last part handed over
        limit = self.dispatcher.claim_limit
        try:
            while not self._stopped and not await self._check_paused():
                self._has_moved = False
                claimed = await self._claim(limit) if self._unsent < limit else []
                if claimed:
                    self._hand_to_lanes(claimed, lanes)
                elif not self._parts:
                    break
                elif not self._has_moved:  # a part finished or work arrived while claiming: look again
                    await self._next_move()
        except Exception as exc:
            log.exception("delivery.worker_failed", destination=self.name, error=str(exc))
        finally:
            await defer.DeferredList(list(self._parts))  # the sends in flight finish and are recorded
            self._running = False
        if not self._stopped:
            await self._sleep_until_due()

    async def _claim(self, limit: int) -> list:
        journal, clock, node = self.dispatcher.journal, self.dispatcher.clock, self.dispatcher.node
        lease_until = time.time() + journal.lease  # wall clock: other nodes read it
        return await journal.submit(
            lambda c, s: _claim_with_payloads(
                c, s, self.name, clock.seconds(), node, lease_until, journal.dialect, limit
            ),
            logged=True,
            indexed_only=True,
        )

    def _hand_to_lanes(self, claimed: list, lanes: dict) -> None:
        """Split the batch into the connector's lanes (a key always maps to the same lane, so FIFO
        per key holds, across batches too: a claim never takes a key with a send in flight) and
        queue each part behind its lane's previous part."""
        count = max(int(getattr(self.connector, "lanes", 1)), 1)
        parts: dict[int, list] = {}
        for item in claimed:
            parts.setdefault(lane_of(item[0].fifo_key, count) if count > 1 else 0, []).append(item)
        for lane, part in parts.items():
            lanes[lane] = d = defer.Deferred.fromCoroutine(self._lane_part(lanes.get(lane), part))
            if not d.called:
                self._parts.add(d)
                d.addBoth(self._part_done, d)

    async def _lane_part(self, previous: defer.Deferred | None, part: list) -> None:
        """Attempt `part` once the lane's previous part is through. Never fails: a fault is logged
        and the lane's next parts still get their turn."""
        self._unsent += len(part)
        try:
            if previous is not None:
                await previous
            await self._attempt_lane(part)
        except Exception as exc:  # noqa: BLE001
            log.exception("delivery.worker_failed", destination=self.name, error=str(exc))
        finally:
            self._unsent -= len(part)

    def _part_done(self, result, part: defer.Deferred) -> None:
        self._parts.discard(part)
        self._moved()
        return result

    def _moved(self) -> None:
        """A part finished, new work was queued or the worker stops: the drain looks again."""
        self._has_moved = True
        waiter, self._move = self._move, None
        if waiter is not None:
            waiter.callback(None)

    def _next_move(self) -> defer.Deferred:
        self._move = defer.Deferred()
        return self._move

    async def _check_paused(self) -> bool:
        """Only connectors that can pause their destination (a refused certificate) pay for the
        look-up; the pause lives in the journal, so every node and `pfi resume` see it."""
        if getattr(self.connector, "pausable", False):
            state = await self.dispatcher.journal.submit(
                lambda c, s: queue.pause_state(c, self.name), indexed_only=True
            )
            self.paused = state is not None
        return self.paused

    async def _attempt_lane(self, claimed: list) -> None:
        """Send in order; successes are recorded together, failures at once. After a retry of one
        key, that key's later deliveries go back unattempted (FIFO per key)."""
        failed_keys: set[str] = set()
        skipped, succeeded = [], []
        for delivery, payload in claimed:
            if self._stopped or self.paused or delivery.fifo_key in failed_keys:
                skipped.append(delivery)
                continue
            outcome, retry_at = await self._send(delivery, payload)
            if outcome.action is Action.DONE:
                succeeded.append((delivery, outcome))
                continue
            await self._record(succeeded)
            succeeded = []
            if outcome.action is Action.PAUSE:
                await self._pause(delivery, outcome.reason)
                continue
            if outcome.action is Action.WAIT_IDENTITY:
                await self._hold_for_identity(delivery, payload, outcome.reason)
                continue
            await self._record([(delivery, outcome)], outcome.action, retry_at)
            if outcome.action is Action.RETRY:
                failed_keys.add(delivery.fifo_key)
        await self._record(succeeded)
        if skipped:
            now = self.dispatcher.clock.seconds()
            await self.dispatcher.journal.submit(
                lambda c, s: queue.release(c, skipped, now, self.dispatcher.node), logged=True, indexed_only=True
            )

    async def _send(self, delivery: queue.Delivery, payload: bytes) -> tuple[Outcome, float | None]:
        d = self.dispatcher
        try:
            outcome = await self.connector.deliver(payload, delivery)
        except Exception as exc:  # a connector bug must not kill the queue
            log.exception("delivery.connector_failed", destination=self.name, delivery=delivery.id)
            outcome = Outcome(Action.RETRY, f"connector error: {exc}")
        retry_at = None
        if outcome.action is Action.RETRY:
            if self.retry is not None and attempts_exhausted(delivery.attempts + 1, self.retry):
                outcome = outcome.gave_up(delivery.attempts + 1)
            else:
                delay = backoff_delay(delivery.attempts + 1, self.retry, self.rng) if self.retry else 1.0
                retry_at = d.clock.seconds() + delay
        if outcome.action is Action.DONE:  # counted, said in delivery.summary (the journal has each)
            d.delivered[self.name] += 1
        else:
            log.warning(
                "delivery.attempt",
                message_id=delivery.message_uid,
                destination=self.name,
                delivery=delivery.id,
                outcome=str(outcome.action),
                reason=outcome.reason,
            )
        if d.metrics is not None:
            self._counted(d.metrics, outcome.action).inc()
        return outcome, retry_at

    def _counted(self, metrics, action: Action):
        """The deliveries counter of an outcome, looked up once (a labels() call takes a lock and
        builds a key: one per message sent otherwise)."""
        counter = self._counters.get(action)
        if counter is None:
            counter = self._counters[action] = metrics.deliveries.labels(self.name, str(action))
        return counter

    async def _hold_for_identity(self, delivery: queue.Delivery, payload: bytes, reason: str) -> None:
        """Hold the send until a PAM.fr update qualifies its patient. The update may have landed
        between the gate's look-up and this hold (its release then found nothing held): look
        once more after the hold is written, and release it if the gate would now let it go."""
        d = self.dispatcher
        now = d.clock.seconds()
        held = await d.journal.submit(
            lambda c, s: queue.hold_for_identity(c, delivery, reason, d.node, now), logged=True
        )
        recheck = getattr(self.connector, "identity_keys_if_qualified", None)
        if not held or recheck is None:
            return
        keys = await threads.deferToThread(recheck, payload)
        if keys:
            await d.journal.submit(
                lambda c, s: queue.release_identity_holds(
                    c,
                    keys,
                    [self.name],
                    d.node,
                    d.clock.seconds(),
                    ids={delivery.id},
                    cause="a PAM.fr update applied while the hold was written",
                ),
                logged=True,
            )

    async def _pause(self, delivery: queue.Delivery, reason: str) -> None:
        """The destination refused our credentials: this delivery goes back to the queue (not
        dead-lettered, retrying cannot help) and the destination waits for an operator."""
        d = self.dispatcher
        now = d.clock.seconds()
        await d.journal.submit(lambda c, s: queue.pause(c, delivery, reason, d.node, now), logged=True)
        self.paused = True
        log.error("delivery.destination_paused", destination=self.name, reason=reason, resume=f"pfi resume {self.name}")

    async def _record(
        self, results: list[tuple[queue.Delivery, Outcome]], action: Action = Action.DONE, retry_at: float | None = None
    ) -> None:
        if not results:
            return
        d = self.dispatcher
        now = d.clock.seconds()
        # A failure keeps its (code, label, local) with its follow-up's mark: resumed after a
        # crash, a failure ZAM still carries the destination's code.
        texts = [
            (delivery, outcome.reason) if action is Action.DONE else (delivery, outcome.reason, outcome.error())
            for delivery, outcome in results
        ]
        # No fsync for successes: after a crash an unrecorded success is sent again with the
        # same MSH-10 (at-least-once; the destination can detect it). Failures are fsync'ed.
        wanted = d.follow_up_steps
        follows = await d.journal.submit(
            lambda c, s: queue.finish_all(c, texts, str(action), d.node, now, retry_at, wanted),
            logged=action is Action.DONE,
            indexed_only=True,
        )
        await d.run_follow_ups(
            [
                (delivery, follow, outcome)
                for (delivery, outcome), follow in zip(results, follows)
                if follow and (delivery.route, delivery.step, follow) in wanted
            ]
        )

    async def _sleep_until_due(self) -> None:
        due = await self.dispatcher.journal.submit(
            lambda c, s: queue.next_due(c, self.name), logged=True, indexed_only=True
        )
        clock = self.dispatcher.clock
        # Also poll: operators (pfi cancel/replay) and other nodes change the queue from outside.
        # Due yet not claimed: another node's claim holds it; look again soon, not at once (new
        # work wakes the worker anyway).
        delay = 1.0 if due is None or self.paused else min(max(due - clock.seconds(), RECHECK_SECONDS), 1.0)
        if not self._stopped and not self._running:
            self._timer = clock.callLater(delay, self.wake)


def _claim_with_payloads(
    conn, store, destination: str, now: float, node: str, lease_until: float, dialect, limit: int
) -> list:
    deliveries = queue.claim_batch(conn, destination, now, node, limit, lease_until, dialect)
    raws = store.messages_raw(conn, [d.message_uid for d in deliveries if d.payload is None])
    return [(d, d.payload if d.payload is not None else raws[d.message_uid]) for d in deliveries]
