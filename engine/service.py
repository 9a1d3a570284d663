"""The engine's service tree, started in a fixed order, each part after the previous one is up:

    CDA checkers warmed up -> patient registry -> journal -> dispatcher (in-flight sends reset,
    follow-ups left due by a stop resumed, one service per destination worker, the planner) -> channel services (mail pollers) ->
    intake summary -> listeners -> metrics endpoint -> periodic tasks

Stopping runs it backwards, each part after the next one is down: listeners stop accepting
first, the planning cycle and the sends in flight finish and are recorded, then the journal
closes, then the registry.

With `routing_process: true` the dispatcher part runs in a child process instead (role
`routing`: CDA checkers, registry, journal as a follower, the dispatcher's part), and this
process (role `intake`) has the child's service in its place (engine/routing/process.py)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import structlog
from twisted.application import internet, service
from twisted.internet import defer, threads
from twisted.internet.endpoints import TCP4ServerEndpoint

from engine.config.channels import MllpInSettings
from engine.config.load import Config
from engine.hl7.charset import normalize_codec
from engine.mllp.intake import Intake, IntakePolicy
from engine.journal import open_journal
from engine.metrics import EngineMetrics
from engine.mllp.budget import BufferBudget
from engine.mllp.server import ListenerLimits, MLLPServerFactory
from engine.routing.dispatcher import CLAIM_BATCH_ROUTING_PROCESS, FOLLOW_UP_SWEEP, Dispatcher
from engine.routing.plan import Environment

log = structlog.get_logger("engine.service")
#: what one engine process does (`pfi run --role`): everything, or, with `routing_process: true`,
#: intake in the parent and routing in a child (engine/routing/process.py)
ALL, INTAKE, ROUTING = "all", "intake", "routing"
RETENTION_EVERY = 60.0  # seconds between retention runs (each bounded, in short transactions)
CERTIFICATE_CHECK_EVERY = 6 * 3600.0  # seconds between looks at certificate expiry


class Sequence(service.MultiService):
    """A MultiService whose children start one after the other (each waits for the Deferred of the
    previous one's startService) and stop in reverse order the same way. Twisted's MultiService
    starts without waiting and stops its children concurrently: a listener could then still
    be accepting while the journal closes."""

    def startService(self):
        service.Service.startService(self)
        return defer.ensureDeferred(self._start_children())

    async def _start_children(self) -> None:
        for child in list(self):
            await defer.maybeDeferred(child.startService)

    def stopService(self):
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            if child.running:
                await defer.maybeDeferred(child.stopService)


class Step(service.Service):
    """A part of the tree given as two callables (each may return a Deferred or a coroutine)."""

    def __init__(self, name: str, start=None, stop=None):
        self.setName(name)
        self._start, self._stop = start, stop

    def startService(self):
        super().startService()
        return _call(self._start)

    def stopService(self):
        super().stopService()
        return _call(self._stop)


def _call(fn):
    if fn is None:
        return None
    result = fn()
    return (
        defer.ensureDeferred(result)
        if hasattr(result, "__await__") and not isinstance(result, defer.Deferred)
        else result
    )


def periodic(name: str, seconds: float, fn, clock) -> internet.TimerService:
    """Run `fn` every `seconds`. A run that fails is logged and the next one still comes: a
    TimerService stops for good at the first failure (one busy database and retention, the
    follow-up sweep or the certificate watch would silently never run again)."""

    def failed(error: str, error_type: str) -> None:
        log.error("engine.periodic_task_failed", task=name, error_type=error_type, error=error[:300])

    def run():
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - logged; the timer goes on
            failed(str(exc), type(exc).__name__)
            return None
        if isinstance(result, defer.Deferred):
            result.addErrback(lambda f: failed(f.getErrorMessage(), f.type.__name__))
        return result

    timer = internet.TimerService(seconds, run)
    timer.clock = clock
    timer.setName(name)
    return timer


class ListenerService(service.Service):
    """Listens on one endpoint; remembers the bound port (tests use port 0)."""

    def __init__(self, name: str, endpoint, factory):
        self.setName(name)
        self.endpoint = endpoint
        self.factory = factory
        self.port = None

    async def _listen(self):
        self.port = await self.endpoint.listen(self.factory)
        address = self.port.getHost()
        log.info("listener.started", channel=self.name, host=address.host, port=address.port)

    def startService(self):
        super().startService()
        return defer.Deferred.fromCoroutine(self._listen())

    def stopService(self):
        super().stopService()
        if self.port is not None:
            return defer.maybeDeferred(self.port.stopListening)
        return None


def policy_for(settings: MllpInSettings, cda_checker=None) -> IntakePolicy:
    """The intake policy of an mllp-in channel (with its document-request gate when opted in);
    `cda_checker(level)` gives the CDA check of a `check_cda` level."""
    return IntakePolicy(
        channel=settings.name,
        versions=tuple(settings.accept.versions),
        message_types=tuple(settings.accept.message_types),
        codec=normalize_codec(settings.charset),
        duplicate_window=settings.duplicate_window,
        local_app=settings.local_app,
        document_check=_document_gate(settings, cda_checker),
        rejected_quota=settings.rejected_quota,
        rejected_head=settings.rejected_head,
        tlr_orders=settings.tlr_orders,
    )


def _document_gate(settings: MllpInSettings, cda_checker=None):
    if settings.ack_mode != "document-request":
        return None
    from engine.docrequest.check import DocumentRequestGate

    check = cda_checker(settings.check_cda) if cda_checker and settings.check_cda != "none" else None
    return DocumentRequestGate(charset=normalize_codec(settings.charset), cda_check=check)


class Engine(Sequence):
    def __init__(
        self,
        config: Config,
        data_dir: Path,
        reactor,
        with_metrics: bool = True,
        clock=None,
        connectors: dict | None = None,
        role: str = ALL,
    ):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.clock = clock or reactor
        self.data_dir = Path(data_dir)
        self.role = self._checked_role(role, config)
        self.node = config.engine.node or socket.gethostname()
        self.metrics = EngineMetrics(node=self.node)
        self.metrics.channels = frozenset(config.channels)
        self.journal = open_journal(config.engine, self.data_dir, reactor, self.node, follower=role == ROUTING)
        self.journal.event_listeners.append(self.metrics.observe_events)
        self._cda_checkers: dict = {}
        self.dispatcher = self._build_dispatcher(connectors)
        self.dispatcher.metrics = self.metrics
        if role == ROUTING:
            self.dispatcher.claim_limit = CLAIM_BATCH_ROUTING_PROCESS
        # The journal wakes the dispatcher when messages to route are committed (a shared journal
        # also for other nodes' messages) and this node's workers when other nodes queued work;
        # with a routing process, the intake process wakes that process instead.
        self.routing_child = self._routing_child() if role == INTAKE else None
        self.journal.on_received = self.routing_child.wake if self.routing_child else self.dispatcher.kick
        self.journal.on_queued = lambda destination: self.dispatcher.wake([destination])
        self.journal.on_follow_ups_adopted = self._resume_follow_ups
        self.journal.unrouted_channels = frozenset(config.channels) - self.dispatcher.route_channels
        self.intake = Intake(self.journal, self.metrics, self.clock)
        self.listeners: dict[str, ListenerService] = {}
        self.buffer_budget = BufferBudget(config.engine.max_buffered_bytes)
        self._build_tree(with_metrics)

    @staticmethod
    def _checked_role(role: str, config: Config) -> str:
        from engine.errors import ConfigurationError

        if role != ALL and (problem := config.engine.routing_process_problem()):
            raise ConfigurationError([problem])
        return role

    def _build_tree(self, with_metrics: bool) -> None:
        Step("cda-warm-up", start=self._warm_up_checkers).setServiceParent(self)
        Step("patients", stop=self.patients.close).setServiceParent(self)
        Step("journal", start=self.journal.open, stop=self.journal.stop).setServiceParent(self)
        if self.role == ROUTING:
            self._build_routing_tree()
            return
        Step("statistics-channels", start=self._register_channels).setServiceParent(self)
        if self.routing_child is not None:  # stopped after the listeners, before the journal
            self.routing_child.setServiceParent(self)
        else:
            self._add_routing()
        self._add_channel_services()
        Step("intake-summary", stop=self.intake.flush_summary).setServiceParent(self)
        for settings in self.config.channels_of_type("mllp-in"):
            self._add_listener(settings)
        if with_metrics and self.config.engine.metrics.enabled:
            self._add_metrics_endpoint()
        self._add_periodic_tasks()

    def _add_routing(self) -> None:
        # Stopped after the dispatcher: its last line counts the sends finished while stopping.
        Step("delivery-summary", stop=self.dispatcher.flush_summary).setServiceParent(self)
        self._dispatcher_services().setServiceParent(self)

    def _build_routing_tree(self) -> None:
        """The routing process (engine/routing/process.py): the dispatcher and its workers on the
        journal the intake process owns; counters forwarded to it, wake-ups read from it."""
        from engine.routing.process import COUNTS_EVERY, CountsForwarder, listen_to_parent, take_routing_lock

        forwarder = CountsForwarder(self.metrics)
        # held until this process exits (the descriptor stays open)
        Step("routing-lock", start=lambda: take_routing_lock(self.data_dir)).setServiceParent(self)
        Step("counts", stop=forwarder.flush).setServiceParent(self)
        self._add_routing()
        Step("parent", start=lambda: listen_to_parent(self.reactor, self.dispatcher)).setServiceParent(self)
        periodic("counts-every-second", COUNTS_EVERY, forwarder.flush, self.reactor).setServiceParent(self)
        self._add_routing_periodic_tasks()

    def _routing_child(self):
        from engine.routing.process import RoutingChild

        argv = [sys.executable, "-m", "engine.cli", "run", "--role", ROUTING, "--config", str(self.config.root)]
        argv += ["--data", str(self.data_dir), "--node", self.node, "--journal", self.config.engine.journal]
        return RoutingChild(self.reactor, argv, self.metrics)

    async def _register_channels(self) -> None:
        """The statistics count outcomes by destination type (dmp, mssante): the journal records
        which channel is which, for the counting in any node and for `pfi stats rebuild`."""
        from engine.journal.stats import register_channels

        kinds = {c.name: c.type for c in self.config.channels.values()}
        await self.journal.submit(lambda conn, store: register_channels(conn, kinds))

    def _dispatcher_services(self) -> Sequence:
        """Sends a previous run left `sending` go back to the queue before any worker claims, the
        follow-ups it left due run, then one service per destination worker, then the planner
        (stopped first)."""
        tree = Sequence()
        tree.setName("dispatcher")
        Step("reset-in-flight", start=self.dispatcher.reset_in_flight).setServiceParent(tree)
        Step("resume-follow-ups", start=self.dispatcher.resume_follow_ups).setServiceParent(tree)
        for name, worker in self.dispatcher.workers.items():
            Step(f"worker-{name}", start=worker.wake, stop=worker.stop).setServiceParent(tree)
        Step("planner", start=self.dispatcher.start_planning, stop=self.dispatcher.stop_planning).setServiceParent(tree)
        return tree

    def _add_periodic_tasks(self) -> None:
        periodic("journal-size", 10.0, self._measure_journal, self.reactor).setServiceParent(self)
        periodic("intake-summary-every-10s", 10.0, self.intake.flush_summary, self.reactor).setServiceParent(self)
        if self.routing_child is None:
            self._add_routing_periodic_tasks()
        periodic("certificates", CERTIFICATE_CHECK_EVERY, self._watch_certificates, self.reactor).setServiceParent(self)
        if self.config.engine.retention_days:
            periodic(
                "retention", RETENTION_EVERY, lambda: defer.ensureDeferred(self._purge_expired()), self.reactor
            ).setServiceParent(self)

    def _add_routing_periodic_tasks(self) -> None:
        periodic("delivery-summary-every-10s", 10.0, self.dispatcher.flush_summary, self.reactor).setServiceParent(self)
        periodic("follow-ups-left-due", FOLLOW_UP_SWEEP, self._resume_follow_ups, self.reactor).setServiceParent(self)

    def _resume_follow_ups(self) -> defer.Deferred:
        d = defer.ensureDeferred(self.dispatcher.resume_follow_ups())
        d.addErrback(lambda f: log.error("routing.follow_ups_not_resumed", error=f.getErrorMessage()))
        return d

    async def _warm_up_checkers(self) -> None:
        # Compile the Schematrons before the first document pays for it (seconds), off the reactor.
        for checker in self._cda_checkers.values():
            await threads.deferToThread(checker.warm_up)

    def _build_dispatcher(self, connectors: dict | None) -> Dispatcher:
        from engine.connectors.catalogue import BuildContext, build_connectors, retry_settings
        from engine.patients import PatientRegistry

        from engine.journal.postgres import is_postgres_url

        shared = self.config.engine.journal if is_postgres_url(self.config.engine.journal) else None
        self.patients = PatientRegistry(self.data_dir, reactor=self.reactor, url=shared)
        from engine.cda.checker import routes_validate_cda

        env = Environment(
            self.config.channels,
            self.config.root,
            patients=self.patients,
            # the intake process of a routing process never plans: no validation workers for it
            cda_validator=self.cda_checker("full")
            if routes_validate_cda(self.config.routes) and self.role != INTAKE
            else None,
            now=self.clock.seconds,
        )
        self.build_context = BuildContext(
            self.config, self.reactor, self.clock, consent=self.patients, enqueue=self._enqueue, journal=self.journal
        )
        if connectors is None:
            connectors = build_connectors(self.build_context)
        #: every destination's connector (queue gauges, certificate watch, mailbox pollers), also
        #: in the intake process of a routing process, whose dispatcher has no worker: it sends
        #: nothing whatever wakes it (its child does)
        self.connectors = connectors
        senders = {} if self.role == INTAKE else connectors
        return Dispatcher(
            self.journal, self.config.routes, env, self.clock, senders, retry_settings(self.config), self.node
        )

    def _add_channel_services(self) -> None:
        """The channels' own services (the MSSanté mailbox pollers feeding the RIS), when their
        connectors are the real ones (`pfi test` replaces connectors with recorders)."""
        from engine.connectors.catalogue import build_services

        if self.build_context.connectors:
            for part in build_services(self.build_context):
                part.setServiceParent(self)

    async def _enqueue(self, channel: str, payload: bytes, delivery) -> None:
        """Queue a connector-made message (a ZAM) for `channel`, under the original message."""
        from engine.journal import deliveries as queue
        from engine.routing.plan import NewDelivery

        now = self.clock.seconds()
        new = NewDelivery(
            route=delivery.route,
            step=f"{delivery.step}/zam",
            destination=channel,
            fifo_key=delivery.fifo_key,
            not_before=now,
            payload=payload,
        )
        await self.journal.submit(lambda conn, store: queue.enqueue(conn, delivery.message_uid, new, self.node, now))
        if self.routing_child is not None:  # the mailbox poller's ZAMs: sent by the routing process
            self.routing_child.queued()
        else:
            self.dispatcher.wake([channel])

    def _add_listener(self, settings: MllpInSettings) -> None:
        from engine.tls import server_endpoint

        subjects = tuple(settings.tls.allowed_subjects) if settings.tls else ()
        limits = ListenerLimits(
            max_connections=settings.max_connections,
            frame_timeout=settings.frame_timeout or None,
            budget=self.buffer_budget,
            clock=self.clock,
        )
        factory = MLLPServerFactory(
            self.intake,
            policy_for(settings, self.cda_checker),
            settings.max_message_bytes,
            settings.idle_timeout or None,
            subjects,
            limits,
        )
        endpoint = server_endpoint(self.reactor, settings)
        listener = ListenerService(settings.name, endpoint, factory)
        listener.setServiceParent(self)
        self.listeners[settings.name] = listener

    def _add_metrics_endpoint(self) -> None:
        from prometheus_client.twisted import MetricsResource
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        root = Resource()
        root.putChild(b"metrics", MetricsResource(registry=self.metrics.registry))
        m = self.config.engine.metrics
        endpoint = TCP4ServerEndpoint(self.reactor, m.port, interface=m.host)
        self.metrics_listener = ListenerService("metrics", endpoint, Site(root))
        self.metrics_listener.setServiceParent(self)

    def _measure_journal(self):
        self.metrics.dispatch_leader.set(1 if self.journal.is_leader else 0)
        waiting, lag = self.journal.unindexed()
        self.metrics.journal_unindexed.set(waiting)
        self.metrics.journal_index_lag.set(lag)
        d = threads.deferToThread(self.journal.size_bytes)
        d.addCallbacks(self.metrics.journal_bytes.set, lambda f: log.warning("journal.size_failed", error=str(f.value)))
        depths = threads.deferToThread(self.journal.queue_depths, list(self.connectors))
        depths.addCallbacks(self._set_queue_gauges, lambda f: log.warning("journal.depths_failed", error=str(f.value)))
        return defer.gatherResults([d, depths], consumeErrors=True)

    def _set_queue_gauges(self, rows) -> None:
        """Queue depth per destination and state, and the oldest pending's age (labels: channel
        names and states, closed sets)."""
        now = self.clock.seconds()
        seen = {(dest, state): count for dest, state, count, _ in rows}
        for dest in self.connectors:
            for state in ("pending", "sending", "held", "dead"):
                self.metrics.queue_messages.labels(dest, state).set(seen.get((dest, state), 0))
            oldest = next((at for d, state, _, at in rows if d == dest and state == "pending"), None)
            self.metrics.queue_oldest_seconds.labels(dest).set(now - oldest if oldest else 0)

    def _watch_certificates(self) -> None:
        """DMP organisation certificates: days-left gauge, warnings 60 and 15 days ahead."""
        import datetime as dt

        from engine.dmp.expiry import watch

        now = dt.datetime.fromtimestamp(self.reactor.seconds(), dt.timezone.utc)
        for name, connector in self.connectors.items():
            expiry = getattr(connector, "certificate_expiry", None)
            if expiry:
                watch(name, expiry, now, self.metrics.certificate_days_left)

    async def _purge_expired(self) -> None:
        """Retention (engine.retention_days): finished messages older than that are purged."""
        before = self.clock.seconds() - self.config.engine.retention_days * 86400
        try:
            purged = await self.journal.purge_before(before)
        except Exception as exc:  # a retention failure must not stop the engine
            log.exception("journal.purge_failed", error=str(exc))
            return
        if purged:
            log.info("journal.purged", messages=purged, node=self.node)

    def port_of(self, channel: str) -> int:
        return self.listeners[channel].port.getHost().port

    def cda_checker(self, level: str):
        """The engine's CDA check of a level (`full`, `structure`), built once: its Schematrons are
        compiled once per engine, in its validation workers (`cda_processes`) or in-process.
        Raises ConfigurationError when the kit is missing."""
        from engine.cda.checker import CdaChecker

        checkers = self._cda_checkers
        if level not in checkers:
            stages = ("conformance", "dmp") if level == "full" else ()
            settings, cache = self.config.engine, self.data_dir / "cache" / "schematron"
            if settings.cda_processes:
                from engine.cda.pool import shared_pool

                checkers[level] = shared_pool(
                    settings.cda_kit, self.config.root, cache, stages, settings.cda_processes, settings.log_level
                )
            else:
                checkers[level] = CdaChecker.from_settings(settings.cda_kit, self.config.root, cache, stages)
        return checkers[level]

    async def _start_children(self) -> None:
        await super()._start_children()
        for name, listener in self.listeners.items():  # the console shows which channels listen
            self.metrics.listening.labels(name).set(1 if listener.port is not None else 0)
        log.info("engine.started", node=self.node, durability=self.journal.durability, role=self.role)

    async def _stop_children(self) -> None:
        await super()._stop_children()
        log.info("engine.stopped", node=self.node)
