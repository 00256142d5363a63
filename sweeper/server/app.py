"""The HTTP API over a :class:`~sweeper.coordinator.Coordinator`. It only translates.

Routes are plain (sync) functions: uvicorn runs them in its thread pool, and the coordinator
and the store are safe to call from several threads (the store serialises what must be).
Every refusal is a JSON :class:`~sweeper.server.schemas.ErrorOut` with a machine-readable
``code``; a 5xx means a fault of the server or its database, never of the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sweeper import __version__
from sweeper.coordinator import Coordinator
from sweeper.protocol import LeaseLostError, SweepNotFoundError, TrialOutcome
from sweeper.server import schemas
from sweeper.server.schemas import ErrorOut
from sweeper.spec import Problem, SpecError, parse_sweep
from sweeper.spec.storable import storable_problems
from sweeper.store import InvalidTransitionError, StoreError, TrialNotFoundError
from sweeper.trials import TrialState

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_BATCH = 1000

SweepId = Annotated[
    str, Path(pattern=schemas.ID_PATTERN, description="A sweep id, as `sweeper sweep` prints")
]
_BEARER = HTTPBearer(auto_error=False)  # module level: route annotations are resolved in this namespace
TrialId = Annotated[int, Path(ge=1, le=schemas.INT32_MAX)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        401: "missing or wrong token",
        404: "no such sweep or trial",
        409: "the state does not allow it (`lease_lost`, `invalid_transition`)",
        413: "body or metric batch too large",
        422: "invalid request",
        503: "the store is unavailable: retry later",
    }.items()
}


# What the coordinator and the store raise, as the refusal a client gets.
REFUSALS: dict[type[Exception], tuple[int, str]] = {
    LeaseLostError: (409, "lease_lost"),
    SweepNotFoundError: (404, "sweep_not_found"),
    TrialNotFoundError: (404, "trial_not_found"),
    InvalidTransitionError: (409, "invalid_transition"),
    StoreError: (503, "store_unavailable"),
}


def error(status: int, code: str, detail: str, problems: list[Problem] | None = None) -> JSONResponse:
    body = ErrorOut(
        code=code,
        detail=detail,
        problems=None
        if problems is None
        else [schemas.ProblemOut(path=p.path, message=p.message) for p in problems],
    )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413, whether or not they announce a length."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error(413, "body_too_large", self._message())(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"request body larger than the server's limit of {self.max_bytes} bytes"


def create_app(
    coordinator: Coordinator,
    *,
    token: str | None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """The ASGI app. ``token`` None serves without authentication (a loopback or ``--insecure`` server).
    ``on_shutdown`` runs (in a worker thread) once the server has stopped taking requests."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            await asyncio.to_thread(on_shutdown)

    app = FastAPI(
        title="sweeper coordinator",
        version=__version__,
        description="Sweeps, trials and the agent protocol. Every /api/v1 route but /health needs "
        "`Authorization: Bearer <token>` when the server was started with a token; this description "
        "(/openapi.json, /docs) is public, and holds nothing of any sweep.",
        lifespan=lifespan,
    )
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    expected = token.encode() if token else None

    # async: a plain function would cost every request a round trip through the thread pool.
    async def authorised(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        if expected is None:
            return
        given = credentials.credentials.encode("utf-8", "surrogateescape") if credentials else b""
        if not hmac.compare_digest(given, expected):
            reason = "wrong token" if credentials else "this server needs a token"
            raise HTTPException(401, reason)

    open_routes = APIRouter(prefix="/api/v1")
    api = APIRouter(prefix="/api/v1", dependencies=[Depends(authorised)], responses=_ERRORS)

    @open_routes.get("/health", response_model=schemas.HealthOut)
    def health() -> schemas.HealthOut:
        return schemas.HealthOut(status="ok", version=__version__)

    # --- sweeps ---------------------------------------------------------------

    @api.post("/sweeps", status_code=201, response_model=schemas.SweepOut)
    def create_sweep(spec: Annotated[dict[str, Any], Body(description="the sweep file as JSON")]) -> Any:
        if problems := storable_problems(spec):
            return error(422, "invalid_sweep", "the sweep file is not valid", problems)
        parsed = parse_sweep(spec, source="request body")
        return schemas.SweepOut.of(coordinator.create_sweep(parsed))

    @api.get("/sweeps", response_model=list[schemas.SweepOut])
    def list_sweeps() -> list[schemas.SweepOut]:
        return [schemas.SweepOut.of(s) for s in coordinator.list_sweeps()]

    @api.get("/sweeps/{sweep_id}", response_model=schemas.SweepOut)
    def get_sweep(sweep_id: SweepId) -> schemas.SweepOut:
        return schemas.SweepOut.of(coordinator.get_sweep(sweep_id))

    @api.post("/sweeps/{sweep_id}/state", response_model=schemas.SweepOut)
    def set_sweep_state(sweep_id: SweepId, body: schemas.SweepStateIn) -> schemas.SweepOut:
        return schemas.SweepOut.of(coordinator.set_sweep_state(sweep_id, body.state))

    @api.get("/sweeps/{sweep_id}/trials", response_model=list[schemas.TrialOut])
    def list_trials(
        sweep_id: SweepId,
        history: Annotated[bool, Query()] = False,
        after: Annotated[
            int, Query(ge=0, le=schemas.INT32_MAX, description="Only trials numbered above it.")
        ] = 0,
        limit: Annotated[int | None, Query(ge=1, le=10_000, description="At most this many trials.")] = None,
    ) -> list[schemas.TrialOut]:
        found = coordinator.trials(sweep_id, with_history=history, after=after, limit=limit)
        return [schemas.TrialOut.of(t) for t in found]

    @api.get("/sweeps/{sweep_id}/counts", response_model=dict[str, int])
    def trial_counts(sweep_id: SweepId) -> dict[str, int]:
        """How many of the sweep's trials are in each state (absent: none)."""
        return {state.value: n for state, n in coordinator.trial_counts(sweep_id).items()}

    # --- the agent protocol ---------------------------------------------------

    @api.post("/sweeps/{sweep_id}/next", response_model=schemas.NextTrialOut)
    def next_trial(sweep_id: SweepId, agent: schemas.AgentIn) -> Any:
        answer = coordinator.next_trial(sweep_id, agent.info(), **agent.ask())
        return _json(schemas.NextTrialOut.of(answer))

    @api.post("/trials/{trial_id}/heartbeat", response_model=schemas.DirectiveOut)
    def heartbeat(trial_id: TrialId, body: schemas.LeaseIn) -> Any:
        directive = coordinator.heartbeat(trial_id, body.lease_id, interrupted=body.interrupted)
        return _json(schemas.DirectiveOut.of(directive))

    @api.post("/trials/{trial_id}/metrics", response_model=schemas.DirectiveOut)
    def report_metrics(trial_id: TrialId, body: schemas.MetricsIn) -> Any:
        if len(body.points) > max_batch:
            return error(
                413,
                "batch_too_large",
                f"a metric report holds at most {max_batch} points, this one has {len(body.points)}: "
                "send them in smaller batches",
            )
        points = [p.point() for p in body.points]
        return _json(schemas.DirectiveOut.of(coordinator.report_metrics(trial_id, body.lease_id, points)))

    @api.post("/trials/{trial_id}/finish", status_code=204, response_class=Response)
    def finish_trial(trial_id: TrialId, body: schemas.FinishIn) -> Response:
        outcome = TrialOutcome(
            state=TrialState(body.state),
            exit_code=body.exit_code,
            stderr_tail=body.stderr_tail,
            stop_reason=body.stop_reason,
        )
        coordinator.finish_trial(trial_id, body.lease_id, outcome)
        return Response(status_code=204)

    app.include_router(open_routes)
    app.include_router(api)
    return app


def _json(body: BaseModel) -> Response:
    """A model the route built itself, as JSON: FastAPI would validate it against the route's
    response_model again. The agent protocol's routes answer every few seconds per agent."""
    return Response(body.model_dump_json(), media_type="application/json")


def _add_error_handlers(app: FastAPI) -> None:
    def handle(exc_type: type[Exception], status: int, code: str) -> None:
        async def handler(_request: Request, exc: Exception) -> JSONResponse:
            return error(status, code, str(exc))

        app.add_exception_handler(exc_type, handler)

    for exc_type, (status, code) in REFUSALS.items():
        handle(exc_type, status, code)

    async def invalid_sweep(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SpecError)
        return error(422, "invalid_sweep", "the sweep file is not valid", list(exc.problems))

    async def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        # Only where and what: echoing the input back could hold NaN, which JSON cannot carry.
        problems = [
            Problem(".".join(str(part) for part in e.get("loc", ())), str(e.get("msg", "invalid")))
            for e in exc.errors()
        ]
        return error(422, "invalid_request", "the request is not valid", problems)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        codes = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return error(exc.status_code, codes.get(exc.status_code, f"http_{exc.status_code}"), str(exc.detail))

    app.add_exception_handler(SpecError, invalid_sweep)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
