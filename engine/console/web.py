"""The console's HTTP side (twisted.web): routing, sign-in, roles, CSRF, security headers, pages.

Every response carries strict headers (CSP without inline script or style, frame denial, no
sniffing, no caching: pages show health data). A request without a signed-in session gets the
login page (401), never data. Every POST needs the session's CSRF token and, when the browser
sends one, an Origin equal to the console's own. Journal work runs in threads: the console's
reactor only renders.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
import urllib.parse
from importlib import resources

import structlog
from jinja2 import Environment, FileSystemLoader, select_autoescape
from twisted.internet import defer, threads
from twisted.web import resource, server

from engine.console import hl7view, statspage
from engine.console.data import ConsoleData, month_bounds
from engine.console.passwords import DUMMY_HASH, verify_password
from engine.console.sessions import LoginLimiter, Sessions
from engine.journal.search import SearchFilters

log = structlog.get_logger(__name__)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
UID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


class Forbidden(Exception):
    pass


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(resources.files("engine.console") / "templates")),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["age"] = _age
    return env


def _when(ts) -> str:
    if not ts:
        return "-"
    from zoneinfo import ZoneInfo

    import datetime as dt

    return dt.datetime.fromtimestamp(ts, ZoneInfo("Europe/Paris")).strftime("%Y-%m-%d %H:%M:%S")


def _age(ts) -> str:
    if not ts:
        return "-"
    seconds = max(time.time() - ts, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


class ConsoleResource(resource.Resource):
    isLeaf = True

    def __init__(self, data: ConsoleData, settings, reactor, metrics=None, indexer=None, clock=time.time):
        super().__init__()
        self.data, self.settings, self.reactor = data, settings, reactor
        self.metrics, self.indexer = metrics, indexer
        self.secure = settings.tls is not None
        self.cookie = b"__Host-pfi_session" if self.secure else b"pfi_session"
        self.sessions = Sessions(settings.session_minutes * 60, settings.session_max_hours * 3600, clock)
        self.limiter = LoginLimiter(clock=clock)
        self.templates = _templates()
        self.jobs: dict[str, dict] = {}
        self.routes = _routes(self)

    # -- plumbing --------------------------------------------------------------------------
    def render(self, request):
        _headers(request, self.secure)
        path = request.path.decode("utf-8", "replace")
        if path.startswith("/static/"):
            return self._static(request, path[len("/static/") :])
        d = defer.ensureDeferred(self._handle(request, path))
        d.addErrback(self._failed, request)
        d.addCallback(self._finish, request)
        return server.NOT_DONE_YET

    async def _handle(self, request, path: str):
        method = request.method.decode()
        session = self.sessions.get(_cookie(request, self.cookie))
        if method == "POST" and not self._post_allowed(request, session):
            return self._page(
                request,
                "error.html",
                session,
                status=403,
                message="Refused: this form is missing its security token (CSRF) or comes from "
                "another site. Reload the page and try again.",
            )
        if path in ("/login", "/logout"):
            return await (self._login(request, session) if path == "/login" else self._logout(request, session))
        if session is None or not session.signed_in:
            return self._login_page(request, session, status=401)
        for pattern, methods, role, handler in self.routes:
            match = pattern.fullmatch(path)
            if match and method in methods:
                if not session.may(role):
                    return self._page(
                        request,
                        "error.html",
                        session,
                        status=403,
                        message=f"Your role ({session.role}) does not allow this; it needs {role}.",
                    )
                return await handler(request, session, *match.groups())
        return self._page(request, "error.html", session, status=404, message="No such page.")

    def _post_allowed(self, request, session) -> bool:
        # Referrer-Policy same-origin (not no-referrer): Chromium then sends our Origin, not "null".
        origin = request.getHeader("origin")
        if origin and origin != self._origin(request):
            return False
        token = _arg(request, "csrf") or request.getHeader("x-csrf-token")
        return session is not None and session.csrf_ok(token)

    def _origin(self, request) -> str:
        host = request.getHeader("host") or ""
        return f"{'https' if self.secure else 'http'}://{host}"

    def _finish(self, body, request):
        if body is not None and not request.finished:
            request.write(body if isinstance(body, bytes) else body.encode("utf-8"))
        if not request.finished:
            request.finish()

    def _failed(self, failure, request):
        log.error(
            "console.request_failed",
            path=request.path.decode("utf-8", "replace"),
            error=failure.getErrorMessage(),
            kind=failure.type.__name__,
        )
        if not request.finished:
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"internal error (logged)"
        return None

    def _static(self, request, name: str):
        if name not in STATIC:
            request.setResponseCode(404)
            return b"not found"
        request.setHeader(b"content-type", STATIC[name].encode())
        return (resources.files("engine.console") / "static" / name).read_bytes()

    def _page(self, request, template: str, session, status: int = 200, **context) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        flash = session.__dict__.pop("flash", None) if session is not None else None
        return (
            self.templates.get_template(template)
            .render(session=session, flash=flash, settings=self.settings, **context)
            .encode("utf-8")
        )

    def _redirect(self, request, location: str, session=None, flash: str = "") -> bytes:
        if session is not None and flash:
            session.flash = flash
        request.setResponseCode(303)
        request.setHeader(b"location", location.encode())
        return b""

    def _set_cookie(self, request, session) -> None:
        request.addCookie(self.cookie, session.id.encode(), path=b"/", secure=True, httpOnly=True, sameSite="strict")

    # -- sign-in ---------------------------------------------------------------------------
    def _login_page(self, request, session, status: int = 200, error: str = "") -> bytes:
        if session is None:
            session = self.sessions.new()
            self._set_cookie(request, session)
        return self._page(request, "login.html", None, status=status, csrf=session.csrf, error=error)

    async def _login(self, request, session):
        if request.method != b"POST":
            if session is not None and session.signed_in:
                return self._redirect(request, "/")
            return self._login_page(request, session)
        user, password = (_arg(request, "user") or "").strip(), _arg(request, "password") or ""
        address = request.getClientAddress().host
        wait = self.limiter.retry_after(user, address)
        if wait > 0:
            request.setHeader(b"retry-after", str(int(wait) + 1).encode())
            log.warning("console.login_throttled", user=user[:64], address=address)
            return self._login_page(
                request, session, status=429, error=f"Too many failed sign-ins: try again in {int(wait) + 1} s."
            )
        found = await threads.deferToThread(self.data.find_user, user)
        ok = await threads.deferToThread(verify_password, password, found.password_hash if found else DUMMY_HASH)
        if not (ok and found):
            self.limiter.failed(user, address)
            log.warning("console.login_failed", user=user[:64], address=address)
            return self._login_page(request, session, status=401, error="Unknown user or wrong password.")
        self.limiter.succeeded(user)
        signed = self.sessions.sign_in(session, found.name, found.role)
        self._set_cookie(request, signed)
        log.info("console.login", user=found.name, role=found.role, address=address)
        return self._redirect(request, "/")

    async def _logout(self, request, session):
        if request.method == b"POST" and session is not None:
            self.sessions.sign_out(session)
            request.addCookie(self.cookie, b"", path=b"/", secure=True, httpOnly=True, sameSite="strict", max_age=0)
        return self._redirect(request, "/login")

    # -- pages -----------------------------------------------------------------------------
    async def dashboard(self, request, session):
        context = await self._dashboard_context()
        return self._page(request, "dashboard.html", session, **context)

    async def dashboard_live(self, request, session):
        context = await self._dashboard_context()
        return self._page(request, "dashboard_live.html", session, **context)

    async def _dashboard_context(self) -> dict:
        if self.metrics is not None:
            await self.metrics.refresh()
        board = await threads.deferToThread(self.data.dashboard, time.time())
        return {"board": board, "metrics": self.metrics, "indexing": bool(self.indexer and self.indexer.behind)}

    async def messages(self, request, session):
        filters, before = _filters(request), _int(_arg(request, "before"))
        rows = await threads.deferToThread(self.data.search, filters, before)
        query = {k: v for k, v in _query(request).items() if k != "before"}
        older = urllib.parse.urlencode({**query, "before": rows[-1].id}) if len(rows) == 50 else ""
        return self._page(
            request,
            "messages.html",
            session,
            rows=rows,
            f=filters,
            query=query,
            older=older,
            csv_query=urllib.parse.urlencode(query),
            channels=sorted(self.data.config.channels),
            since=_arg(request, "since") or "",
            until=_arg(request, "until") or "",
            indexing=bool(self.indexer and self.indexer.behind),
        )

    async def messages_csv(self, request, session):
        """The search's results as CSV (up to 10,000 rows), without patient identifiers."""
        rows = await threads.deferToThread(self.data.search, _filters(request), None, 10_000)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["id", "received", "channel", "type", "control_id", "state", "ack", "sender", "reason"])
        for r in rows:
            writer.writerow(
                [
                    r.uid,
                    _when(r.received_at),
                    r.channel,
                    r.msg_type,
                    r.control_id,
                    r.state,
                    r.ack_code,
                    r.sender,
                    r.reason,
                ]
            )
        request.setHeader(b"content-type", b"text/csv; charset=utf-8")
        request.setHeader(b"content-disposition", b'attachment; filename="messages.csv"')
        return out.getvalue().encode("utf-8")

    async def message(self, request, session, uid: str, report=None):
        detail, raw = await threads.deferToThread(self.data.detail, uid)
        if detail is None:
            return self._page(request, "error.html", session, status=404, message="No such message.")
        from engine.console.cdaview import cda_view, embedded_documents

        reveal = session.shows_identities(uid, time.time())
        segments, text = hl7view.segment_view(raw or b"", reveal)
        ack_segments, ack_text = hl7view.segment_view(detail.ack, True) if detail.ack else ([], "")
        documents = [(loc, cda_view(content, reveal)) for loc, content in embedded_documents(raw or b"")]
        validation = [e for e in detail.events if e[2] in ("invalid", "rejected") or "CDA" in (e[4] or "")]
        return self._page(
            request,
            "message.html",
            session,
            m=detail,
            segments=segments,
            text=text,
            ack_text=ack_text,
            documents=documents,
            reveal=reveal,
            validation=validation,
            report=report,
            has_raw=raw is not None,
        )

    async def confirm(self, request, session, uid: str, action: str):
        what = {
            "replay": "Send this message through the current routes again?",
            "reveal": "Show this patient's identity? The journal records that you asked.",
        }[action]
        return self._page(
            request, "confirm.html", session, action=f"/messages/{uid}/{action}", question=what, back=f"/messages/{uid}"
        )

    async def reveal(self, request, session, uid: str):
        await threads.deferToThread(self.data.reveal, uid, session.user, time.time())
        from engine.console.sessions import REVEAL_MINUTES

        session.revealed[uid] = time.time() + REVEAL_MINUTES * 60
        return self._redirect(request, f"/messages/{uid}", session, "Identity shown (recorded in the journal).")

    async def replay(self, request, session, uid: str):
        count = await threads.deferToThread(self.data.replay, [uid], session.user)
        flash = (
            "Message re-queued through the current routes."
            if count
            else "Not re-queued: unknown, or a rejected frame kept only in part (ask the sender for the message)."
        )
        return self._redirect(request, f"/messages/{uid}", session, flash)

    async def validate(self, request, session, uid: str):
        from engine.console.validation import validation_report

        _, raw = await threads.deferToThread(self.data.detail, uid)
        report = await threads.deferToThread(validation_report, raw or b"", self.data.config)
        return await self.message(request, session, uid, report=report)

    async def cancel_confirm(self, request, session, delivery: str):
        return self._page(
            request,
            "confirm.html",
            session,
            action=f"/deliveries/{delivery}/cancel",
            question=f"Cancel delivery {delivery}? It will not be sent.",
            back=_safe_back(_arg(request, "back")),
        )

    async def cancel(self, request, session, delivery: str):
        count = await threads.deferToThread(self.data.cancel, delivery, session.user)
        flash = f"Delivery {delivery} cancelled." if count else f"Delivery {delivery} was not pending or held."
        return self._redirect(request, _safe_back(_arg(request, "back")), session, flash)

    async def dead(self, request, session):
        uids = await threads.deferToThread(self.data.dead_letters, _arg(request, "channel") or None)
        return self._page(
            request,
            "dead.html",
            session,
            count=len(uids),
            channel=_arg(request, "channel") or "",
            jobs=sorted(self.jobs.items(), reverse=True)[:5],
        )

    async def dead_replay(self, request, session):
        """Bulk replay in chunks (one transaction each, the CLI's code), its progress on /jobs/ID."""
        channel = _arg(request, "channel") or None
        uids = await threads.deferToThread(self.data.dead_letters, channel)
        job_id = f"{int(time.time() * 1000):x}"
        job = self.jobs[job_id] = {
            "total": len(uids),
            "done": 0,
            "replayed": 0,
            "finished": False,
            "user": session.user,
        }
        defer.ensureDeferred(self._run_job(job, uids)).addErrback(
            lambda f: (job.update(finished=True, error=f.getErrorMessage()), None)
        )
        return self._redirect(request, f"/jobs/{job_id}", session)

    async def _run_job(self, job: dict, uids: list[str], chunk: int = 50) -> None:
        for start in range(0, len(uids), chunk):
            part = uids[start : start + chunk]
            job["replayed"] += await threads.deferToThread(self.data.replay, part, job["user"])
            job["done"] += len(part)
        job["finished"] = True

    async def job(self, request, session, job_id: str):
        job = self.jobs.get(job_id)
        if job is None:
            return self._page(request, "error.html", session, status=404, message="No such job.")
        return self._page(request, "job.html", session, job=job, job_id=job_id)

    async def job_json(self, request, session, job_id: str):
        request.setHeader(b"content-type", b"application/json")
        job = self.jobs.get(job_id, {})
        return json.dumps({k: job.get(k) for k in ("total", "done", "replayed", "finished", "error")}).encode()

    async def statistics(self, request, session):
        first, last = month_bounds(time.time())
        first, last = _arg(request, "from") or first, _arg(request, "to") or last
        table = await threads.deferToThread(
            statspage.statistics_table, self.data.access, first, last, self.data.config.root
        )
        charts = statspage.bar_charts(table) if table else []
        return self._page(
            request,
            "statistics.html",
            session,
            table=table,
            charts=charts,
            first=first,
            last=last,
            not_available=statspage.NOT_AVAILABLE,
        )

    async def statistics_csv(self, request, session):
        first, last = month_bounds(time.time())
        table = await threads.deferToThread(
            statspage.statistics_table,
            self.data.access,
            _arg(request, "from") or first,
            _arg(request, "to") or last,
            self.data.config.root,
        )
        if table is None:
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return statspage.NOT_AVAILABLE.encode()
        request.setHeader(b"content-type", b"text/csv; charset=utf-8")
        request.setHeader(b"content-disposition", b'attachment; filename="statistics.csv"')
        return statspage.as_csv(table).encode("utf-8")

    async def configuration(self, request, session):
        findings = await threads.deferToThread(self.data.findings)
        return self._page(
            request,
            "configuration.html",
            session,
            findings=findings,
            channels=self.data.channel_settings(),
            routes=self.data.route_settings(),
            dumps=lambda v: json.dumps(v, indent=1, ensure_ascii=False),
        )

    async def users_page(self, request, session):
        found = await threads.deferToThread(self.data.list_users)
        return self._page(request, "users.html", session, users=found)


def _routes(app: ConsoleResource) -> list:
    uid = r"([0-9A-Za-z]{26})"
    table = [
        (r"/", "GET", "viewer", app.dashboard),
        (r"/dashboard/live", "GET", "viewer", app.dashboard_live),
        (r"/messages", "GET", "viewer", app.messages),
        (r"/messages\.csv", "GET", "viewer", app.messages_csv),
        (rf"/messages/{uid}", "GET", "viewer", app.message),
        (rf"/messages/{uid}/(replay|reveal)", "GET", "operator", app.confirm),
        (rf"/messages/{uid}/reveal", "POST", "operator", app.reveal),
        (rf"/messages/{uid}/replay", "POST", "operator", app.replay),
        (rf"/messages/{uid}/validate", "POST", "operator", app.validate),
        (r"/deliveries/(\d+)/cancel", "GET", "operator", app.cancel_confirm),
        (r"/deliveries/(\d+)/cancel", "POST", "operator", app.cancel),
        (r"/dead", "GET", "viewer", app.dead),
        (r"/dead/replay", "POST", "operator", app.dead_replay),
        (r"/jobs/([0-9a-f]+)", "GET", "viewer", app.job),
        (r"/jobs/([0-9a-f]+)\.json", "GET", "viewer", app.job_json),
        (r"/statistics", "GET", "viewer", app.statistics),
        (r"/statistics\.csv", "GET", "viewer", app.statistics_csv),
        (r"/configuration", "GET", "admin", app.configuration),
        (r"/users", "GET", "admin", app.users_page),
    ]
    return [(re.compile(p), (m,), role, h) for p, m, role, h in table]


def _headers(request, secure: bool) -> None:
    for name, value in (
        ("content-security-policy", CSP),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
    ):
        request.setHeader(name.encode(), value.encode())
    if secure:
        request.setHeader(b"strict-transport-security", b"max-age=31536000")


def _cookie(request, name: bytes) -> str | None:
    value = request.getCookie(name)
    return value.decode("ascii", "replace") if value else None


def _arg(request, name: str) -> str | None:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def _query(request) -> dict:
    return {k.decode(): v[0].decode("utf-8", "replace") for k, v in request.args.items() if v and v[0]}


def _int(value) -> int | None:
    return int(value) if value and value.isdigit() else None


def _filters(request) -> SearchFilters:
    text = {
        name: (_arg(request, name) or "").strip()[:200]
        for name in ("control_id", "ipp", "ins", "accession", "document", "channel", "msg_type", "state")
    }
    return SearchFilters(**text, since=_local_time(_arg(request, "since")), until=_local_time(_arg(request, "until")))


def _local_time(value: str | None) -> float | None:
    """A datetime-local field (Europe/Paris) as a timestamp; None when empty or unreadable."""
    if not value:
        return None
    import datetime as dt
    from zoneinfo import ZoneInfo

    try:
        return dt.datetime.fromisoformat(value).replace(tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    except ValueError:
        return None


def _safe_back(value: str | None) -> str:
    """A local path to return to (never another site)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"
