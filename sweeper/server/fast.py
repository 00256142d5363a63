"""The agent protocol's hot routes, answered without FastAPI's per-request machinery.

Every running trial calls the server every few seconds (heartbeats, metric reports), so the
cost of one such request bounds how many agents a coordinator can serve. FastAPI spends more
time routing, resolving dependencies and passing through its middleware than sweeper spends
in the store. :class:`AgentRoutes` sits in front of the app from :func:`create_app` and
answers the well-formed requests of four routes itself, with the same request models, the
same coordinator calls and the same refusals.

Anything else goes to the app unchanged, the body it already read included: other routes and
methods, a missing or different ``Authorization`` or ``Content-Type``, a body that is too
large or fails validation, a batch over the limit. So every refusal of a malformed request
still comes from FastAPI (401, 413, 422 and their bodies), and the OpenAPI description stays
the one source of what the routes accept.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable

from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sweeper.coordinator import Coordinator
from sweeper.protocol import Directive, TrialOutcome
from sweeper.server import schemas
from sweeper.server.app import REFUSALS, error
from sweeper.server.calls import LoopCalls, ThreadCalls
from sweeper.store import LeaseCall, TrialCall
from sweeper.trials import TrialState

_NEXT = re.compile(r"/api/v1/sweeps/([A-Za-z0-9_-]{1,64})/next")
_TRIAL = re.compile(r"/api/v1/trials/([0-9]{1,19})/(heartbeat|metrics|finish)")
_MODELS: dict[str, type[BaseModel]] = {
    "next": schemas.AgentIn,
    "heartbeat": schemas.LeaseIn,
    "metrics": schemas.MetricsIn,
    "finish": schemas.FinishIn,
}
_JSON = b"application/json"


class AgentRoutes:
    def __init__(
        self,
        app: ASGIApp,
        coordinator: Coordinator,
        *,
        token: str | None,
        max_body_bytes: int,
        max_batch: int,
    ) -> None:
        self.app = app
        self._coordinator = coordinator
        # Header bytes equal to this are the token FastAPI would accept; a token that is not ASCII
        # is left to FastAPI, which reads header bytes as Latin-1.
        self._authorization = f"Bearer {token}".encode() if token else None
        self._short_path = token is None or token.isascii()
        self._max_body_bytes = max_body_bytes
        self._max_batch = max_batch
        store = coordinator.store
        runner = LoopCalls if store.embedded else ThreadCalls  # see sweeper.server.calls
        self._calls = runner(store.batch, store.trial_calls, store.lease_calls)

    def close(self) -> None:
        """Finish the calls under way, then touch the store no more."""
        self._calls.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _route(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None or not self._short_path or not self._acceptable(scope):
            await self.app(scope, receive, send)
            return
        action, key = route
        received: list[Message] = []
        parsed = await self._parse(action, key, receive, received)
        if parsed is None:  # FastAPI gives the same answer it always did, from the same bytes
            await self.app(scope, _replay(received, receive), send)
            return
        try:
            status, body = await self._calls.run(*parsed)
        except Exception as exc:
            refusal = _refusal(exc)
            if refusal is None:
                raise  # uvicorn answers 500 and logs it, as the app would
            await error(refusal[0], refusal[1], str(exc))(scope, receive, send)
            return
        headers = [(b"content-length", b"%d" % len(body)), (b"content-type", _JSON)] if body else []
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _acceptable(self, scope: Scope) -> bool:
        """The headers a well-behaved agent sends, and a body within the limit."""
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)  # the first of repeated headers, as Starlette reads them
        if headers.get(b"content-type") != _JSON:
            return False
        length = headers.get(b"content-length", b"")
        if not length.isdigit() or int(length) > self._max_body_bytes:
            return False
        if self._authorization is None:
            return True
        return hmac.compare_digest(headers.get(b"authorization", b""), self._authorization)

    async def _parse(
        self, action: str, key: str, receive: Receive, received: list[Message]
    ) -> tuple[Callable[[], tuple[int, bytes]], TrialCall | LeaseCall] | None:
        """The coordinator call a valid request asks for, and what it is (a lease, or a call on one
        trial); None for anything else."""
        chunks = []
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self._max_body_bytes:
                return None
            if not message.get("more_body", False):
                break
        try:
            body = _MODELS[action].model_validate(json.loads(b"".join(chunks)))
        except (ValueError, ValidationError, RecursionError):  # RecursionError: JSON nested too deep
            return None
        coordinator = self._coordinator
        if isinstance(body, schemas.AgentIn):
            agent, ask = body.info(), body.ask()
            lease = lambda: coordinator.next_trial(key, agent, **ask)  # noqa: E731
            return lambda: (200, _dump(schemas.NextTrialOut.of(lease()))), LeaseCall(key)
        trial_id = int(key)
        if not 1 <= trial_id <= schemas.INT32_MAX:
            return None
        if isinstance(body, schemas.LeaseIn):
            note, lease_id = body.interrupted, body.lease_id
            renew = lambda: coordinator.heartbeat(trial_id, lease_id, interrupted=note)  # noqa: E731
            return lambda: (200, _directive(renew())), TrialCall(trial_id, ())
        if isinstance(body, schemas.MetricsIn):
            if len(body.points) > self._max_batch:
                return None
            points, lease_id = [p.point() for p in body.points], body.lease_id
            report = TrialCall(trial_id, points)
            return lambda: (200, _directive(coordinator.report_metrics(trial_id, lease_id, points))), report
        assert isinstance(body, schemas.FinishIn)
        outcome = TrialOutcome(
            state=TrialState(body.state),
            exit_code=body.exit_code,
            stderr_tail=body.stderr_tail,
            stop_reason=body.stop_reason,
        )

        def finish() -> tuple[int, bytes]:
            coordinator.finish_trial(trial_id, body.lease_id, outcome)
            return 204, b""

        return finish, TrialCall(trial_id)


def _route(scope: Scope) -> tuple[str, str] | None:
    """(action, sweep or trial id) for a path of the agent protocol."""
    path = scope["path"]
    if (found := _TRIAL.fullmatch(path)) is not None:
        return found[2], found[1]
    if (found := _NEXT.fullmatch(path)) is not None:
        return "next", found[1]
    return None


def _replay(received: list[Message], receive: Receive) -> Receive:
    """``receive`` as if nothing had been read from it yet."""
    pending = list(received)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


def _refusal(exc: Exception) -> tuple[int, str] | None:
    for exc_type in type(exc).__mro__:
        if exc_type in REFUSALS:
            return REFUSALS[exc_type]  # type: ignore[index]
    return None


_CONTINUE = schemas.DirectiveOut(stop=False).model_dump_json().encode()


def _directive(directive: Directive) -> bytes:
    return _CONTINUE if not directive.stop else _dump(schemas.DirectiveOut.of(directive))


def _dump(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()
