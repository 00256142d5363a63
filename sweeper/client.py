"""A coordinator reached over HTTP, with the same methods as the embedded one.

Standard library only (sockets, json, ssl): an agent machine imports this without a web
framework, SQLAlchemy or numpy. Failures map onto exceptions the agent already handles:

* the network or the server is down (refused, reset, timeout, 5xx): an ``OSError``
  (:class:`CoordinatorUnavailableError`), which the agent retries with backoff;
* 401: :class:`AuthenticationError` (a ``PermissionError``, so an ``OSError`` too: catch it first);
* 404 for a sweep: :class:`~sweeper.protocol.SweepNotFoundError`; for a trial: :class:`TrialNotFoundError`;
* 409 ``lease_lost``: :class:`~sweeper.protocol.LeaseLostError`;
* any other refusal: :class:`CoordinatorError` with the server's code and message.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import secrets
import socket
import ssl
import threading
import urllib.error
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sweeper.protocol import (
    AgentInfo,
    Assignment,
    Directive,
    LeaseLostError,
    NoTrial,
    NoTrialReason,
    SweepNotFoundError,
    TrialNotFoundError,
    TrialOutcome,
)
from sweeper.redact import redact_urls
from sweeper.tokens import token_problem
from sweeper.transport import KeepAliveTransport, transport_for
from sweeper.trials import MetricPoint, Sweep, SweepState, Trial, TrialState, count_states

if TYPE_CHECKING:
    from sweeper.spec import SweepSpec

API = "/api/v1"
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_PROBE_TIMEOUT = 3.0  # seconds for the TLS handshake that tells a TLS server from one going down


class CoordinatorError(Exception):
    """The coordinator refused a request (a 4xx other than the ones with their own class)."""

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class CoordinatorUnavailableError(ConnectionError):
    """The coordinator could not be reached or failed to answer; worth retrying later.
    ``answered``: something answered, with an error (a 5xx, a busy store, no JSON), rather than
    nothing at all (down, cut off, or a proxy saying its server is: 502, 504)."""

    def __init__(self, message: str, *, answered: bool = False) -> None:
        super().__init__(message)
        self.answered = answered


class WrongSchemeError(CoordinatorUnavailableError):
    """The server may speak plain HTTP where the URL says https, or TLS where it says http; the
    message says what to change. ``certain``: it does (retrying cannot help)."""

    def __init__(self, message: str, *, certain: bool) -> None:
        super().__init__(message)
        self.certain = certain


class CoordinatorTimeoutError(CoordinatorUnavailableError):
    """The coordinator took a connection and gave no answer in time: down, busy, or a large answer."""


class CoordinatorSetupError(ValueError):
    """The client's own settings cannot work: a malformed URL (``about`` "url"), a token no HTTP
    header can carry ("token"), a CA file that holds no certificate ("ca_file")."""

    def __init__(self, message: str, about: str) -> None:
        super().__init__(message)
        self.about = about


class AuthenticationError(PermissionError):
    """The coordinator wants a token this client did not give, or a different one."""


def _scheme_problem(reason: object, url: str, *, probe: bool) -> tuple[str, bool] | None:
    """What to change when the URL's scheme may not be the one the server speaks, and whether
    it certainly is not (retrying cannot help); None when the scheme is not in question.
    ``probe``: a TLS handshake may tell (not through a proxy, nor once the server answered)."""
    if "WRONG_VERSION_NUMBER" in str(reason):  # TLS spoken to a server that answers in plain HTTP
        return "the server there speaks plain HTTP, not TLS: use an http:// URL", True
    if url.startswith("http://") and isinstance(reason, http.client.RemoteDisconnected):
        # A TLS server hangs up on a request in plain HTTP; so does a server going down. A
        # handshake tells them apart.
        if probe and _speaks_tls(url):
            return "the server there speaks TLS: use an https:// URL", True
        return "if that server was started with --ssl-certfile, use an https:// URL", False
    return None


def _speaks_tls(url: str) -> bool:
    """Whether the server at ``url`` completes a TLS handshake (whoever its certificate names)."""
    parts = urllib.parse.urlsplit(url)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only whether it speaks TLS; nothing is sent
    try:
        with socket.create_connection(
            (parts.hostname or "", parts.port or 80), timeout=_PROBE_TIMEOUT
        ) as sock:
            with context.wrap_socket(sock, server_hostname=parts.hostname):
                return True
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return False


def _chosen_ca_file(ca_file: str | None) -> str | None:
    return ca_file or os.environ.get("SWEEPER_CA_FILE") or None


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Trusting ``ca_file`` or SWEEPER_CA_FILE (the certificate, or CA, a self-signed server is
    trusted by, for every command), else the system's store (and SSL_CERT_FILE)."""
    named = "" if ca_file else " (SWEEPER_CA_FILE)"
    ca_file = _chosen_ca_file(ca_file)
    try:
        return ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError:
        raise CoordinatorSetupError(f"CA file {ca_file!r}{named}: no such file", "ca_file") from None
    except ssl.SSLError as exc:  # before OSError, which it is
        raise CoordinatorSetupError(
            f"CA file {ca_file!r}{named} holds no certificate that can be read ({exc.reason or exc}): "
            "give the server's certificate, or its CA's, in PEM",
            "ca_file",
        ) from None
    except OSError as exc:  # a folder, no permission
        raise CoordinatorSetupError(f"CA file {ca_file!r}{named}: {exc.strerror or exc}", "ca_file") from None


def _trust_hint(trusted: str | None) -> str:
    """What to do about a certificate that does not verify, given the CA file in use, if any."""
    if trusted is None:
        return "trust it with SWEEPER_CA_FILE=PATH (the certificate, or the CA that signed it)"
    return (
        f"the CA file in use ({trusted}) does not vouch for it: check that it is this server's "
        "certificate (or its CA's), and that the URL's host is one the certificate names"
    )


def encode_float(value: float) -> float | str:
    """JSON has no NaN or infinity: send them as the strings the API names."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def decode_float(value: float | str) -> float:
    if isinstance(value, str):
        return _NON_FINITE[value]
    return float(value)


class HttpCoordinator:
    """Implements :class:`sweeper.protocol.CoordinatorService` over the server's ``/api/v1`` routes."""

    def __init__(
        self, url: str, *, token: str | None = None, timeout: float = 10.0, ca_file: str | None = None
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        try:
            parsed.port  # noqa: B018  (raises for a port that is not a number from 0 to 65535)
        except ValueError as exc:
            raise CoordinatorSetupError(
                f"coordinator URL {redact_urls(url, keep_user=False)!r}: {exc}", "url"
            ) from None
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise CoordinatorSetupError(
                "coordinator URL must look like http://host:port or https://host:port, got "
                f"{redact_urls(url)!r}",
                "url",
            )
        if parsed.username is not None or parsed.password is not None:
            raise CoordinatorSetupError(
                f"coordinator URL {redact_urls(url, keep_user=False)!r} holds a user or password, which "
                "sweeper does not send: give the server's token with --token or SWEEPER_TOKEN, and the "
                "URL without it",
                "url",
            )
        if token and (problem := token_problem(token)) is not None:
            raise CoordinatorSetupError(problem, "token")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._token = token or None
        context = _tls_context(ca_file) if parsed.scheme == "https" else None
        self._trusted = _chosen_ca_file(ca_file)  # named when it does not vouch for the server
        self._transport = transport_for(self.url, timeout=timeout, context=context)
        self._unanswered: dict[tuple[str, str], str] = {}  # (sweep, agent name): request id
        self._asks_plainly = False  # without request ids, which a server older than them refuses
        self._heard = False  # the server has answered a call: its scheme is the URL's
        self._lock = threading.Lock()

    @property
    def _may_probe(self) -> bool:
        return not self._heard and isinstance(self._transport, KeepAliveTransport)

    def __repr__(self) -> str:  # never shows the token
        return f"HttpCoordinator({self.url!r})"

    def close(self) -> None:
        """Close the connections kept open to the server; a later call opens a new one. Call it
        once no other thread is calling: a call in flight keeps its connection."""
        self._transport.close()

    def __enter__(self) -> HttpCoordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the agent protocol -------------------------------------------------

    def next_trial(self, sweep_id: str, agent: AgentInfo) -> Assignment | NoTrial:
        # An ask whose answer never came may have leased a trial all the same: the next ask for
        # the agent names it, and gets that trial rather than leave it running with nobody there.
        asked = (sweep_id, agent.name)
        with self._lock:
            unanswered = self._unanswered.pop(asked, None)
        request_id = unanswered or secrets.token_hex(16)
        body: dict[str, Any] = {"name": agent.name, "host": agent.host, "gpu": agent.gpu}
        if not self._asks_plainly:
            body.update(request_id=request_id, resent=unanswered is not None)
        try:
            answer = self._call("POST", f"/sweeps/{_segment(sweep_id)}/next", body)
        except CoordinatorUnavailableError:  # timeouts too: the server may have leased one
            with self._lock:
                self._unanswered[asked] = request_id
            raise
        except CoordinatorError as exc:
            if self._asks_plainly or not _older_server(exc, "request_id"):
                raise
            self._asks_plainly = True  # a server older than request ids: ask as it knows how
            return self.next_trial(sweep_id, agent)
        if answer.get("no_trial") is not None:
            no = answer["no_trial"]
            return NoTrial(NoTrialReason(no["reason"]), no["message"], retry_after=float(no["retry_after"]))
        return _assignment(answer["assignment"])

    def unanswered_trial(self, sweep_id: str, agent: AgentInfo) -> Assignment | None:
        with self._lock:
            request_id = self._unanswered.pop((sweep_id, agent.name), None)
        if request_id is None or self._asks_plainly:  # (a server older than request ids cannot look)
            return None
        body = {"name": agent.name, "host": agent.host, "gpu": agent.gpu}
        body.update(request_id=request_id, resent=True, new_lease=False)
        try:
            answer = self._call("POST", f"/sweeps/{_segment(sweep_id)}/next", body)
        except CoordinatorError as exc:
            if _older_server(exc, "new_lease"):  # it cannot look: the trial runs out its lease
                return None
            raise
        return None if answer.get("no_trial") is not None else _assignment(answer["assignment"])

    def heartbeat(self, trial_id: int, lease_id: str, *, interrupted: str | None = None) -> Directive:
        body = (
            {"lease_id": lease_id}
            if interrupted is None
            else {"lease_id": lease_id, "interrupted": interrupted}
        )
        return _directive(self._call("POST", f"/trials/{int(trial_id)}/heartbeat", body))

    def report_metrics(self, trial_id: int, lease_id: str, points: Sequence[MetricPoint]) -> Directive:
        body = {
            "lease_id": lease_id,
            "points": [
                {"name": p.name, "value": encode_float(p.value), "step": p.step, "seq": p.seq, "time": p.time}
                for p in points
            ],
        }
        return _directive(self._call("POST", f"/trials/{int(trial_id)}/metrics", body))

    def finish_trial(self, trial_id: int, lease_id: str, outcome: TrialOutcome) -> None:
        body = {
            "lease_id": lease_id,
            "state": TrialState(outcome.state).value,
            "exit_code": outcome.exit_code,
            "stderr_tail": outcome.stderr_tail,
            "stop_reason": outcome.stop_reason,
        }
        self._call("POST", f"/trials/{int(trial_id)}/finish", body)

    # --- sweeps -------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def create_sweep(self, spec: SweepSpec) -> Sweep:
        return _sweep(self._call("POST", "/sweeps", dict(spec.raw)))

    def get_sweep(self, sweep_id: str) -> Sweep:
        return _sweep(self._call("GET", f"/sweeps/{_segment(sweep_id)}"))

    def list_sweeps(self) -> list[Sweep]:
        return [_sweep(s) for s in self._call("GET", "/sweeps")]

    def set_sweep_state(self, sweep_id: str, state: SweepState) -> Sweep:
        body = {"state": SweepState(state).value}
        return _sweep(self._call("POST", f"/sweeps/{_segment(sweep_id)}/state", body))

    def trials(
        self, sweep_id: str, *, with_history: bool = False, after: int = 0, limit: int | None = None
    ) -> list[Trial]:
        params = {"history": "true"} if with_history else {}
        if after:
            params["after"] = str(int(after))
        if limit is not None:
            params["limit"] = str(int(limit))
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        found = [_trial(t) for t in self._call("GET", f"/sweeps/{_segment(sweep_id)}/trials{query}")]
        return [t for t in found if t.number > after]  # a server older than pages sends every trial

    def trial_counts(self, sweep_id: str) -> dict[TrialState, int]:
        try:
            counts = self._call("GET", f"/sweeps/{_segment(sweep_id)}/counts")
        except CoordinatorError as exc:
            if exc.code != "http_404":
                raise
            # A server older than this route: count the trials it sends.
            return dict(count_states(self.trials(sweep_id)))
        return {TrialState(state): int(n) for state, n in counts.items()}

    def spec_of(self, sweep_id: str) -> SweepSpec:
        from sweeper.spec import parse_sweep

        return parse_sweep(self.get_sweep(sweep_id).spec, source=f"sweep {sweep_id}")

    def best_trial(self, sweep_id: str) -> Trial | None:
        from sweeper.results import best_of

        return best_of(self.spec_of(sweep_id), self.trials(sweep_id))

    # --- transport ----------------------------------------------------------

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body, allow_nan=False).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        where = f"{method} {self.url}{API}{path}"
        try:
            status, reason, raw = self._transport.exchange(method, f"{API}{path}", data, headers)
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, ssl.SSLCertVerificationError):  # a set-up mistake: retrying cannot help
                raise CoordinatorError(
                    f"{where}: the server's certificate is not trusted ({reason.verify_message}); "
                    + _trust_hint(self._trusted),
                    status=0,
                    code="untrusted_certificate",
                ) from None
            if isinstance(reason, TimeoutError):  # it may be up, and slow to answer this call
                raise CoordinatorTimeoutError(
                    f"{where}: no answer within {self.timeout:g}s (the coordinator is down or busy, or "
                    "the answer is large)"
                ) from exc
            said = f"coordinator {self.url} unreachable: {reason}"
            if (problem := _scheme_problem(reason, self.url, probe=self._may_probe)) is not None:
                hint, certain = problem
                raise WrongSchemeError(f"{said} ({hint})", certain=certain) from exc
            raise CoordinatorUnavailableError(said) from exc
        self._heard = True
        if status >= 300:  # the API never redirects: a 3xx is not an answer to this call
            raise self._refusal(status, reason, raw, where)
        if not raw:  # only a trial's end answers with nothing (204); no answer is not an answer
            if status == 204:
                return None
            raise CoordinatorUnavailableError(
                f"{where}: {status} with an empty body, where JSON belongs", answered=True
            )
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise CoordinatorUnavailableError(
                f"{where}: the answer is not JSON ({exc})", answered=True
            ) from None

    def _refusal(self, status: int, reason: str, raw: bytes, where: str) -> Exception:
        try:
            payload = json.loads(raw or b"{}")
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        code = str(payload.get("code", ""))
        detail = str(payload.get("detail") or reason)
        if status == 401:
            return AuthenticationError(
                f"{self.url} refused the request: {detail}. Pass the server's token with --token or the "
                "SWEEPER_TOKEN environment variable"
            )
        if status >= 500 or status == 408 or status == 429:
            return CoordinatorUnavailableError(
                f"{where}: {status} {detail}", answered=status not in (502, 504)
            )
        if code == "lease_lost":
            return LeaseLostError(detail)
        if code == "sweep_not_found":
            return SweepNotFoundError(detail)
        if code == "trial_not_found":
            return TrialNotFoundError(detail)
        if code in ("", "not_found") and (status < 400 or status == 404):  # no route of the API
            what = "a redirect, which the API never sends" if status < 400 else "no such route"
            return CoordinatorError(
                f"{where}: {status} {detail}: {what} (is the id right, and is {self.url} the sweeper "
                "server's URL, http or https as it serves?)",
                status=status,
                code=f"http_{status}",
            )
        problems = payload.get("problems") or []
        if problems:
            detail += "".join(f"\n  {p.get('path') or '(top level)'}: {p.get('message')}" for p in problems)
        return CoordinatorError(f"{detail}", status=status, code=code or f"http_{status}")


def _assignment(a: Mapping[str, Any]) -> Assignment:
    return Assignment(
        sweep_id=a["sweep_id"],
        trial_id=int(a["trial_id"]),
        trial_number=int(a["trial_number"]),
        lease_id=a["lease_id"],
        lease_seconds=float(a["lease_seconds"]),
        config=a["config"],
        command=tuple(a["command"]),
        program=a["program"],
        metric_name=a["metric_name"],
        integrations=a.get("integrations"),
        restore_from=a.get("restore_from"),
        checkpoint_to=a.get("checkpoint_to"),
        retry_of=a.get("retry_of"),
        resume_from=tuple(a.get("resume_from") or ()),
        discard_checkpoints=tuple(a.get("discard_checkpoints") or ()),
        project=a.get("project"),
        entity=a.get("entity"),
        time_limit=_seconds(a.get("time_limit")),
        stall_limit=_seconds(a.get("stall_limit")),
    )


def _older_server(exc: CoordinatorError, field: str) -> bool:
    """The server refused ``field`` in a request body as unknown to it: it is older than the field."""
    return exc.status == 422 and f"body.{field}: Extra inputs are not permitted" in str(exc)


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def _segment(sweep_id: str) -> str:
    """A sweep id as a path segment. One a URL cannot hold as a segment ('', '.', '..': the
    server would be asked for another path, '/sweeps/' say) names no sweep."""
    if str(sweep_id) in ("", ".", ".."):
        raise SweepNotFoundError(f"no sweep {sweep_id!r}")
    return urllib.parse.quote(str(sweep_id), safe="")


def _directive(answer: Mapping[str, Any]) -> Directive:
    return Directive(stop=bool(answer["stop"]), reason=answer.get("reason"))


def _sweep(s: Mapping[str, Any]) -> Sweep:
    return Sweep(
        id=s["id"],
        name=s["name"],
        method=s["method"],
        state=SweepState(s["state"]),
        spec=s["spec"],
        seed=int(s["seed"]),
        created_at=float(s["created_at"]),
        updated_at=float(s["updated_at"]),
    )


def _trial(t: Mapping[str, Any]) -> Trial:
    history = None
    if t.get("history") is not None:
        history = tuple(
            MetricPoint(p["name"], decode_float(p["value"]), int(p["step"]), int(p["seq"]), float(p["time"]))
            for p in t["history"]
        )
    return Trial(
        id=int(t["id"]),
        sweep_id=t["sweep_id"],
        number=int(t["number"]),
        config=t["config"],
        state=TrialState(t["state"]),
        created_at=float(t["created_at"]),
        ended_at=t["ended_at"],
        retry_of=t["retry_of"],
        member=t.get("member"),
        restore_from=t.get("restore_from"),
        agent=t["agent"],
        host=t["host"],
        lease_id=t["lease_id"],
        lease_expires_at=t["lease_expires_at"],
        exit_code=t["exit_code"],
        stderr_tail=t["stderr_tail"],
        stop_reason=t["stop_reason"],
        stop_requested=t["stop_requested"],
        summary={k: decode_float(v) for k, v in t["summary"].items()},
        history=history,
    )
