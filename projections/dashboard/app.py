"""The read-only status dashboard: server-rendered pages, their JSON twins, and a live change stream.

Only for those signed in (:mod:`projections.dashboard.signin`), and each sees only the projects
they are granted (:mod:`projections.dashboard.access`): every query takes the reader's projects,
and another project's update is "no such update".

Read-only by construction: every route is GET (the route table is tested), and the database
connections refuse writes (SQLite ``query_only``, PostgreSQL read-only transactions). Event
content is rendered through Jinja2 with autoescaping on, and every response carries a strict
Content-Security-Policy (scripts and styles only from this origin, no inline code).

Live: ``/api/stream`` polls the projection's head row (the dashboard is a separate process
from the projection) and sends a ``change`` event naming the updates that changed; the page's
script then re-fetches its own URL and swaps the live regions in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domain.config import DashboardConfig
from domain.db import make_engine
from projections import detail, queries, trends
from projections.dashboard import charts, observability, render, signin
from projections.dashboard.access import Viewer
from projections.dashboard.signin import Reader
from projections.schemas import LiveState, RejectedPage, UpdateDetail, UpdateFilters, UpdatePage
from projections.view import STATUSES

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
_STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
    "favicon.ico": "image/x-icon",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

# How many servers, IPs and raw events an update's HTML page shows at a time (it links to the
# next and previous pages of servers and IPs): rendering all 10,000 servers of a big update, and
# 1,000 raw events with their envelopes, took seconds and made a page no one can scroll.
PAGE_SIZES = {"servers": 200, "ips": 100, "events": 100}

READ_THREADS = 1
"""Requests reading the database at once in one dashboard process. A request's work is mostly
Python (building and serialising its models; SQLite answers in a fraction of it), so threads
running together only took turns for the interpreter lock, at a cost: with 8 requests in flight,
40 threads (anyio's default) spent ≈ 2× the CPU per request of one, and the unlucky waited
longest. One at a time, first come first served (bench.dashboard). More processes
(``dashboard serve --workers N``) give more at once."""

T = TypeVar("T")


class SecurityHeadersMiddleware:
    """Adds :data:`SECURITY_HEADERS` (and ``Cache-Control: no-store`` unless set) to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def read_only_engine(database_url: str) -> Engine:
    """An engine whose connections cannot write, whatever code runs on them, and whose sessions
    each read one snapshot.

    A page is several queries (an update's counts, then a page of its servers counted and read
    rank group by rank group): each seeing the database as it was when the first ran means a row
    is never shown twice, or missed, because the projection committed in between. PostgreSQL:
    REPEATABLE READ (a read-only transaction there never fails to serialise). SQLite: the driver
    starts no transaction before a SELECT, so the session's BEGIN is sent here; in WAL mode the
    reader keeps its snapshot until the session ends, and the projection writes meanwhile.
    """
    # Pooled connections for as many requests as a worker has in flight under load: past the pool
    # an overflow connection is opened (with its pragmas) and closed per request, costlier than a query.
    engine = make_engine(database_url, pool_size=16)

    @event.listens_for(engine, "connect")
    def _read_only(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        if engine.dialect.name == "sqlite":
            cur.execute("PRAGMA query_only = ON")
            dbapi_conn.isolation_level = None  # BEGIN is sent by _snapshot below, for reads too
        elif engine.dialect.name == "postgresql":
            cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY, ISOLATION LEVEL REPEATABLE READ")
            dbapi_conn.commit()
        cur.close()

    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "begin")
        def _snapshot(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN")

    return engine


def _session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine) as s:
        yield s


Db = Annotated[Session, Depends(_session)]


def create_app(database_url: str, *, access: DashboardConfig, session_secret: bytes | None = None,
               secure_cookies: bool = True, poll_seconds: float = 0.2, stream_seconds: float = 300.0,
               read_threads: int = READ_THREADS, unroutable: Callable[[], int | None] | None = None,
               metrics_token_sha256: str | None = None) -> FastAPI:
    """The dashboard over the projection database at ``database_url`` (it must be migrated already).

    ``access``: who may sign in and what each sees. ``session_secret`` signs the session cookies
    (the same in every worker; random when None: sessions then end with the process).
    ``secure_cookies``: False only to test sign-in over plain HTTP.
    ``metrics_token_sha256``: the digest of the token that lets a scraper not on loopback read /metrics
    (observability.py).
    ``read_threads``: how many requests read the database at once in this process (see
    :data:`READ_THREADS`); the others wait their turn, first come first served.
    ``unroutable``: how many events wait in the broker's unroutable queue (bus.unroutable.UnroutableGauge,
    cached), shown in the header; the one broker figure the dashboard shows, as no event records it.
    """
    if read_threads < 1:
        raise ValueError(f"read_threads must be at least 1, not {read_threads}")
    engine = read_only_engine(database_url)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Every route reads in a worker thread (sync routes, their session dependency, ``read``),
        # all through the default thread limiter of this process's event loop.
        anyio.to_thread.current_default_thread_limiter().total_tokens = read_threads
        # What the process holds once started (modules, SQLAlchemy's and pydantic's compiled
        # schemas, templates: ≈ 130,000 objects) lives as long as it does: a full collection
        # walked it all, ≈ 100 ms on a slow machine, and every request in flight waited.
        gc.freeze()
        yield

    templates = render.templates(_HERE / "templates")
    static = {name: (_HERE / "static" / name).read_bytes() for name in _STATIC}

    app = FastAPI(
        title="hotupdate dashboard",
        description="Read-only status of hot updates, from the projection's event log and status view.",
        version="1",
        # The interactive docs load scripts from a CDN, which the CSP forbids; the schema stays at /openapi.json.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    signin.install(app, access, templates, session_secret=session_secret or secrets.token_bytes(32),
                   secure_cookies=secure_cookies)
    app.add_middleware(SecurityHeadersMiddleware)
    app.state.engine = engine
    # /healthz, /readyz, /metrics: no sign-in (metrics to loopback or the metrics token)
    observability.install(app, engine, metrics_token_sha256=metrics_token_sha256)

    def read(fn: Callable[[Session], T]) -> Awaitable[T]:
        def run() -> T:
            with Session(engine) as s:
                return fn(s)

        return run_in_threadpool(run)

    def read_json(fn: Callable[[Session], BaseModel]) -> Awaitable[Response]:
        # One trip to the thread pool for the session, the query and the serialisation (a sync
        # route with a session dependency took three), and the model is serialised once.
        return read(lambda s: Response(fn(s).model_dump_json(), media_type="application/json"))

    def page(request: Request, name: str, db: Session, viewer: Viewer, live: LiveState, status_code: int = 200,
             **context: Any) -> HTMLResponse:
        # ``live`` is read before the page's data, so a change in between is reported by the stream.
        if unroutable is not None:
            count = unroutable()
            context["unroutable_total"] = "?" if count is None else count
        params = _params(request)
        return templates.TemplateResponse(request, name, {
            "updateid": "", "live": live, "viewer": viewer, "now": datetime.now(UTC),
            "rejected_total": queries.list_rejected(db, page_size=1, projects=viewer.projects).total,
            "query": lambda **changes: _query({**params, **changes}), **context}, status_code=status_code)

    # --- HTML pages -------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False, name="list_page")
    def list_page(request: Request, viewer: Reader, db: Db) -> HTMLResponse:
        live = queries.live_state(db)
        error = ""
        try:
            filters = UpdateFilters.model_validate(_params(request))
        except ValidationError as exc:
            error = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            filters = UpdateFilters()
        result = queries.list_updates(db, filters, viewer.projects)
        per_day = charts.updates_per_day(trends.updates_per_day(db, filters, viewer.projects))
        return page(request, "list.html", db, viewer, live, 400 if error else 200, view="list", result=result,
                    per_day=per_day, outcomes=trends.OUTCOMES, filters=filters,
                    facets=queries.facets(db, viewer.projects), error=error, statuses=STATUSES)

    @app.get("/updates/{updateid}", response_class=HTMLResponse, include_in_schema=False, name="update_page")
    def update_page(request: Request, updateid: str, viewer: Reader, db: Db,
                    servers_offset: Annotated[int, Query(ge=0)] = 0,
                    ips_offset: Annotated[int, Query(ge=0)] = 0) -> HTMLResponse:
        live = queries.live_state(db)
        u = detail.update_detail(db, updateid, events_limit=PAGE_SIZES["events"],
                                  servers_offset=servers_offset, servers_limit=PAGE_SIZES["servers"],
                                  ips_offset=ips_offset, ips_limit=PAGE_SIZES["ips"],
                                  projects=viewer.projects)
        if u is None:
            return page(request, "not_found.html", db, viewer, live, 404, view="update", updateid=updateid)
        unit = u.progress.unit if u.progress else "servers"
        spread = trends.finish_bins(db, updateid, unit, u.started_at)
        what = "CDN dirs" if unit == "cdn_dirs" else "IPs"
        return page(request, "update.html", db, viewer, live, view="update", u=u, updateid=updateid,
                    finish_chart=charts.finish_times(spread, what), finish_what=what,
                    slowest=spread.slowest if spread else [], sizes=PAGE_SIZES)

    @app.get("/rejected", response_class=HTMLResponse, include_in_schema=False, name="rejected_page")
    def rejected_page(request: Request, viewer: Reader, db: Db,
                      page_no: Annotated[int, Query(alias="page", ge=1)] = 1) -> HTMLResponse:
        live = queries.live_state(db)
        result = queries.list_rejected(db, page=page_no, projects=viewer.projects)
        return page(request, "rejected.html", db, viewer, live, view="rejected", result=result)

    # --- JSON twins ---------------------------------------------------------------------------

    # The JSON twins return the query's already-validated models serialised once (a Response is sent
    # as is); ``response_model`` still describes them in the OpenAPI schema.

    @app.get("/api/updates", response_model=UpdatePage, tags=["updates"])
    async def api_updates(filters: Annotated[UpdateFilters, Query()], viewer: Reader) -> Response:
        """Hot updates matching the filters, most recently active first."""
        return await read_json(partial(queries.list_updates, filters=filters, projects=viewer.projects))

    @app.get("/api/updates/{updateid}", response_model=UpdateDetail, tags=["updates"],
             responses={404: {"description": "no such update (or another project's)"}})
    async def api_update(updateid: str, viewer: Reader,
                         events_limit: Annotated[int, Query(ge=0, le=100_000)] = 20,
                         servers_offset: Annotated[int, Query(ge=0)] = 0,
                         servers_limit: Annotated[int, Query(ge=0, le=100_000)] = 100,
                         ips_offset: Annotated[int, Query(ge=0)] = 0,
                         ips_limit: Annotated[int, Query(ge=0, le=100_000)] = 50) -> Response:
        """One update: timeline, per-IP and per-server results (failed first; one page of each:
        ``ips_offset``, ``ips_limit`` (default 50), ``ips_total`` and ``servers_offset``,
        ``servers_limit`` (default 100), ``servers_total``), CDN dirs, rsync targets, files, its
        first raw events in log order (``events_limit``, default 20, ``events_total``), and its
        rejected events. The default pages are a screenful each (a raw event is ≈ 2 KiB): an update
        of 10,000 servers answers in a few ms; ask for more, or page, with the limits and offsets."""
        found = await read(partial(detail.update_detail_json, updateid=updateid, events_limit=events_limit,
                                   servers_offset=servers_offset, servers_limit=servers_limit,
                                   ips_offset=ips_offset, ips_limit=ips_limit, projects=viewer.projects))
        if found is None:
            raise HTTPException(status_code=404, detail=f"no update {updateid!r}")
        return Response(found, media_type="application/json")

    @app.get("/api/rejected", response_model=RejectedPage, tags=["rejected"])
    async def api_rejected(viewer: Reader, page_no: Annotated[int, Query(alias="page", ge=1)] = 1,
                           page_size: Annotated[int, Query(ge=1, le=500)] = 50) -> Response:
        """Messages the projection parked (malformed, unknown, invalid, or out of tries), with the reason."""
        return await read_json(partial(queries.list_rejected, page=page_no, page_size=page_size,
                                       projects=viewer.projects))

    @app.get("/api/state", response_model=LiveState, tags=["live"])
    async def api_state(_viewer: Reader) -> Response:
        """The log's last position, the projection's change counter and the last rejection's id."""
        return await read_json(queries.live_state)

    @app.get("/api/stream", response_class=EventSourceResponse, tags=["live"])
    async def api_stream(
        request: Request,
        viewer: Reader,
        position: int | None = None,
        version: int | None = None,
        rejected: int | None = None,
    ) -> AsyncIterator[ServerSentEvent]:
        """Server-sent events: ``change`` (a :class:`LiveChange`) whenever the projection changed.

        Pass the state the page was rendered at (``position``, ``version``, ``rejected``) so
        a change between rendering and connecting is not missed.
        """
        before = _resume_state(request.headers.get("last-event-id"), position, version, rejected)
        if before is None:
            before = await read(queries.live_state)
        yield ServerSentEvent(event="hello", data=before, retry=1000)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + stream_seconds  # the browser reconnects; no stream lives forever
        while loop.time() < deadline:
            now = await read(queries.live_state)
            if now != before:
                change = await read(partial(queries.changes_since, before=before, now=now, projects=viewer.projects))
                if change is not None:
                    yield ServerSentEvent(event="change", data=change,
                                          id=f"{now.position}.{now.version}.{now.rejected}")
                before = now
            await asyncio.sleep(poll_seconds)

    # --- static files (explicit GET routes: nothing else is served) ------------------------------

    @app.get("/favicon.ico", include_in_schema=False, name="favicon")
    def favicon() -> Response:
        # browsers ask for it on every page, the sign-in page too: a 404 there is noise in every log
        return Response(static["favicon.ico"], media_type=_STATIC["favicon.ico"],
                        headers={"Cache-Control": "max-age=86400"})

    @app.get("/static/{name}", include_in_schema=False, name="static")
    def static_file(name: str) -> Response:
        if name not in static:
            raise HTTPException(status_code=404)
        return Response(static[name], media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})

    return app


def _resume_state(last_event_id: str | None, position: int | None, version: int | None,
                  rejected: int | None) -> LiveState | None:
    """The state a client already has: from ``Last-Event-ID`` on a reconnect, else from the query."""
    if last_event_id:
        parts = last_event_id.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            return LiveState(position=int(parts[0]), version=int(parts[1]), rejected=int(parts[2]))
    if position is not None and version is not None and rejected is not None:
        return LiveState(position=position, version=version, rejected=rejected)
    return None


def _params(request: Request) -> dict[str, str]:
    """The request's query parameters that are not blank."""
    return {k: v for k, v in request.query_params.items() if v.strip()}


def _query(params: dict[str, Any]) -> str:
    return "?" + urlencode({k: v for k, v in params.items() if v not in (None, "")})
