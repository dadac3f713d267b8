"""The emulator's starlette app: the Model API's routes, auth, validation, faults and the ledger.

Every route answers what the reference (shared/reference/runcomfy-model-api.md) documents; every
success is HTTP 200. State lives in ``EmulatorState`` and is only touched on the event loop, so a
handler's synchronous steps never race.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from orchestrator.canonical import input_sha256
from orchestrator.emulator.catalog import Offer, catalog_entry, emulated_catalog, list_models
from orchestrator.emulator.config import EmulatorConfig
from orchestrator.emulator.farm import Farm, Job, OutOfBalance
from orchestrator.emulator.faults import FaultDice, FaultSpec
from orchestrator.emulator.ledger import Account, iso_time, ledger_snapshot
from orchestrator.emulator.media import MediaCache, Rendered
from orchestrator.emulator.outputs import Output, gpu_seconds, job_cost, material, output_of, render
from orchestrator.emulator.uploads import extra_problems, problem_detail
from orchestrator.emulator.wire import (
    BodyError,
    RawSend,
    TruncatedResponse,
    api_error,
    drop_connection,
    fault_response,
    read_json_object,
)
from orchestrator.models import Model

__all__ = ["EmulatorApp", "EmulatorState", "create_app"]

log = logging.getLogger("orchestrator.emulator")
_VACE = "community/wan-2-2/vace-fun"
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_REFUSALS = (
    "rate_limit",
    "http_500",
    "http_500_bare",
    "http_503",
    "http_503_bare",
    "proxy_html",
    "error_200",
    "refuse_input",
)


class EmulatorState:
    """Everything the app serves from: the farm, the accounts, the fault dice, the media cache."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.offers: dict[str, Offer] = emulated_catalog()
        self.models: dict[str, Model] = {i: o.model for i, o in self.offers.items()}
        balance = config.starting_balance
        self.token_accounts = {t: f"account{i + 1}" for i, t in enumerate(config.tokens)}
        accounts = {n: Account(n, balance) for n in self.token_accounts.values()}
        self.farm = Farm(
            config.workers,
            config.speed,
            config.clock,
            accounts,
            balance,
            config.state_path,
            jitter=config.duration_jitter,
            seed=config.seed,
        )
        self.dice = FaultDice(config.faults, config.seed)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        media_dir = config.media_dir
        if media_dir is None and config.state_path is not None:
            media_dir = config.state_path.with_name(config.state_path.name + ".media")
        if media_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="comfysweep-emulator-")
            media_dir = Path(self._tmp.name)
        self.media = MediaCache(media_dir)
        self._defaults: dict[str, tuple[dict[str, Any], set[str]]] = {}
        self._outputs: dict[str, Output] = {}
        # Every request served, by endpoint, and the latest ones as (emulator time, endpoint,
        # HTTP status): how many requests a client spent, and when (tests/test_pacing*.py).
        self.requests: Counter[str] = Counter()
        self.request_log: deque[tuple[float, str, int]] = deque(maxlen=100_000)
        self._recent: deque[float] = deque()  # arrival times within the last second (rate_cap)

    def arrived(self, endpoint: str) -> float:
        """Count a request; its arrival time on the emulator's clock."""
        now = self.config.clock()
        self.requests[endpoint] += 1
        if "rate_cap" in self.dice.profile.faults:
            self._recent.append(now)
            while self._recent and self._recent[0] <= now - 1.0:
                self._recent.popleft()
        return now

    def over_cap(self, endpoint: str) -> FaultSpec | None:
        """The rate_cap fault, when more than its per_second requests came in the last second."""
        spec = self.dice.profile.faults.get("rate_cap")
        if spec is None or len(self._recent) <= spec.param("per_second"):
            return None
        return self.dice.roll("rate_cap", endpoint)

    def complete(self, model: Model, body: dict[str, Any]) -> dict[str, Any]:
        """``model.complete(body)`` for a body already checked, without checking it again.

        (Each check builds a jsonschema validator: checking twice was a fifth of a submit.)
        """
        if model.model_id not in self._defaults:
            floats = {
                k for k, p in model.properties.items() if p.get("type") in ("float", "number")
            }
            defaults = {k: model.normalise(k, v) for k, v in model.defaults().items()}
            self._defaults[model.model_id] = (defaults, floats)
        defaults, floats = self._defaults[model.model_id]
        return defaults | {k: float(v) if k in floats else v for k, v in body.items()}

    def output(self, job: Job) -> Output:
        """What a finished job made (a model no longer served: a vace-fun-shaped video)."""
        made = self._outputs.get(job.request_id)
        if made is None:  # once a job: it may read an input image's size
            offer = self.offers.get(job.model_id) or self.offers[_VACE]
            made = self._outputs[job.request_id] = output_of(offer, job.inputs)
        return made

    def render(self, job: Job, made: Output) -> Rendered:
        """The job's output file, rendered unless cached (call from a worker thread)."""
        offer = self.offers.get(job.model_id)
        if offer is None or offer.model_id == _VACE:
            return self.media.get(job.inputs)
        inputs = job.inputs
        return self.media.made(
            material(offer, inputs, made), made.extension, lambda p: render(p, offer, inputs, made)
        )

    def close(self) -> None:
        self.farm.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def ledger(self) -> dict[str, Any]:
        self.farm.advance()
        snapshot = ledger_snapshot(self.farm.history, self.farm.accounts.values())
        snapshot["faults_fired"] = self.dice.fired()
        snapshot["renders"] = self.media.renders
        return snapshot


class EmulatorApp(RawSend):
    """The ASGI app; ``swap`` replaces the state it serves (for tests that reuse one server)."""

    def __init__(self, api: _Api, app: Starlette) -> None:
        super().__init__(app)
        self._api = api

    @property
    def state(self) -> EmulatorState:
        return self._api.state

    def swap(self, state: EmulatorState) -> EmulatorState:
        """Serve ``state`` from now on; returns the old one. Call with no request in flight."""
        old, self._api.state = self._api.state, state
        return old


def create_app(state: EmulatorState) -> EmulatorApp:
    """The ASGI app serving ``state`` (wrapped so a fault can drop a connection)."""
    api = _Api(state)
    routes = [
        Route("/v1/models", api.catalog_list, methods=["GET"]),
        Route("/v1/models/categories", api.categories, methods=["GET"]),
        Route("/v1/models/{model_id:path}", api.model_route, methods=["GET", "POST"]),
        Route("/v1/requests/{request_id}/status", api.status, methods=["GET"]),
        Route("/v1/requests/{request_id}/result", api.result, methods=["GET"]),
        Route("/v1/requests/{request_id}/cancel", api.cancel, methods=["POST"]),
        Route("/outputs/{token}/{name}", api.download, methods=["GET", "HEAD"]),
        # RunComfy's serverless API (another base, the same token) answers the balance.
        Route("/prod/v2/balance", api.balance, methods=["GET"]),
        Route("/_emulator/ledger", api.ledger, methods=["GET"]),
        Route("/_emulator/requests", api.requests, methods=["GET"]),
        Route("/_emulator/restart", api.restart, methods=["POST"]),
    ]
    return EmulatorApp(api, Starlette(routes=routes))


_Handler = Callable[[Request], Awaitable[Response]]


class _Refused(Exception):
    """Raised by a check deep in a handler to answer with ``response`` instead."""

    def __init__(self, response: Response) -> None:
        self.response = response


class _Api:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    @property
    def farm(self) -> Farm:
        return self.state.farm

    # -- the protocol ---------------------------------------------------------------------------

    async def model_route(self, request: Request) -> Response:
        if request.method == "GET" and not request.path_params["model_id"]:
            return await self.catalog_list(request)  # /v1/models/ with its trailing slash
        if request.method == "POST":
            return await self._guarded(request, "submit", self._submit)
        return await self._guarded(request, "catalog", self._model)

    async def catalog_list(self, request: Request) -> Response:
        return await self._guarded(request, "catalog", self._list)

    async def categories(self, request: Request) -> Response:
        return await self._guarded(request, "catalog", self._categories)

    async def status(self, request: Request) -> Response:
        return await self._guarded(request, "status", self._status)

    async def result(self, request: Request) -> Response:
        return await self._guarded(request, "result", self._result)

    async def cancel(self, request: Request) -> Response:
        return await self._guarded(request, "cancel", self._cancel)

    async def _guarded(self, request: Request, endpoint: str, handler: _Handler) -> Response:
        """Faults around a handler: restart and refusals before it, a slow answer after it."""
        dice = self.state.dice
        arrived = self.state.arrived(endpoint)
        if dice.roll("restart", endpoint):
            log.warning("fault restart: forgetting every job")
            self.farm.forget()
        fault = self.state.over_cap(endpoint) or dice.first(_REFUSALS, endpoint)
        if fault is not None:
            log.warning("fault %s on %s %s", fault.name, request.method, request.url.path)
            refusal = fault_response(fault)
            self.state.request_log.append((arrived, endpoint, refusal.status_code))
            return refusal
        try:
            response: Response = await handler(request)
        except _Refused as refused:
            response = refused.response
        except OSError as exc:  # its journal on a full disk: the job was not made; no traceback
            log.info("cannot write the emulator's journal: %s", exc.strerror or exc)
            self.state.request_log.append((arrived, endpoint, 500))
            return api_error(500, 500001, "the emulator cannot write its journal")
        self.state.request_log.append((arrived, endpoint, response.status_code))
        slow = dice.roll("slow", endpoint)
        if slow is not None:
            log.warning("fault slow: holding %s back %.1f s", request.url.path, slow.param("delay"))
            await anyio.sleep(slow.param("delay"))
        return response

    def _account(self, request: Request) -> Account:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        name = self.state.token_accounts.get(token.strip()) if scheme.lower() == "bearer" else None
        if name is None:
            log.warning("refused %s: missing or wrong API token (400004)", request.url.path)
            message = "invalid or expired API token, or inactive account"
            raise _Refused(api_error(401, 400004, message))
        return self.farm.account(name)

    async def _submit(self, request: Request) -> Response:
        account = self._account(request)
        model_id = request.path_params["model_id"]
        model = self.state.models.get(model_id)
        if model is None:
            detail = [{"loc": ["path", "model_id"], "msg": "unknown model", "type": "not_found"}]
            return api_error(400, 400001, f"model {model_id!r} not found", detail)
        try:
            body = await read_json_object(request, self.state.config.max_body_bytes)
        except BodyError as refused:
            log.warning("refused submit: %s (%s)", refused.message, refused.status)
            return refused.response()
        detail = [problem_detail(model, body, p) for p in model.problems(body)]
        detail += extra_problems(model, body, {d["loc"][1] for d in detail})
        if detail:
            log.warning("refused submit: %d invalid field(s) (422001)", len(detail))
            return api_error(422, 422001, "input does not match the model's schema", detail)
        inputs = self.state.complete(model, body)
        offer = self.state.offers[model_id]
        made = output_of(offer, inputs)
        try:
            job = self.farm.submit(
                account,
                model_id,
                inputs,
                input_sha256(inputs),
                self.state.dice.job_faults(),
                seconds=gpu_seconds(offer, inputs, made),
                cost=job_cost(offer, inputs, made),
            )
        except OutOfBalance:
            log.warning("refused submit: %s has no balance left (400002)", account.name)
            return api_error(402, 400002, "insufficient balance")
        if self.state.dice.roll("drop_after_create", "submit"):
            log.warning("fault drop_after_create: job %s exists, dropping", job.request_id)
            return await drop_connection(request)
        urls = self._urls(request, job)
        return JSONResponse({"request_id": job.request_id, **urls})

    def _job(self, request: Request) -> Job:
        account = self._account(request)
        request_id = request.path_params["request_id"]
        job = self.farm.jobs.get(request_id) if _REQUEST_ID.fullmatch(request_id) else None
        if job is None:
            log.info("refused %s: unknown request id (404001)", request.url.path)
            raise _Refused(api_error(404, 404001, f"request {request_id!r} not found"))
        if job.account is not account:
            log.info("refused %s: another account's request (403001)", request.url.path)
            raise _Refused(api_error(403, 403001, "this request belongs to another user"))
        self.farm.advance()
        return job

    async def _status(self, request: Request) -> Response:
        job = self._job(request)
        body: dict[str, Any] = {"request_id": job.request_id, "status": _status_word(job)}
        if job.state == "in_queue":
            body["queue_position"] = self.farm.queue_position(job)
        urls = self._urls(request, job)
        body["status_url"], body["result_url"] = urls["status_url"], urls["result_url"]
        return JSONResponse(body)

    async def _result(self, request: Request) -> Response:
        job = self._job(request)
        body: dict[str, Any] = {
            "request_id": job.request_id,
            "status": _result_word(job),
            "model_id": job.model_id,
            "created_at": iso_time(job.created_at),
        }
        if job.state == "in_queue":
            body["queue_position"] = self.farm.queue_position(job)
        if job.terminal:
            body["finished_at"] = iso_time(job.finished_at)
        if job.state == "succeeded":
            made = self.state.output(job)
            name = f"{job.request_id[:8]}.{made.extension}"
            url = f"{_origin(request)}/outputs/{job.output_token}/{name}"
            body["output"] = url if "bare_output" in job.faults else {made.kind: url}
        if job.state == "failed":
            body["error"] = job.error
        if request.query_params.get("include_cost", "").lower() in ("true", "1"):
            body["cost"] = round(job.billed_usd, 6) if job.terminal else None
            if job.terminal:  # billed all the same: only the report of it is wrong
                _misreport_cost(body, job.faults)
        return JSONResponse(body)

    async def _cancel(self, request: Request) -> Response:
        job = self._job(request)
        done = self.farm.cancel(job) or job.state == "cancelled"
        outcome = "cancelled" if done else "not_cancellable"
        body = {"request_id": job.request_id, "status": _status_word(job), "outcome": outcome}
        return JSONResponse(body)

    async def _model(self, request: Request) -> Response:
        self._account(request)
        model_id = request.path_params["model_id"]
        offer = self.state.offers.get(model_id)
        if offer is None:
            return api_error(400, 400001, f"model {model_id!r} not found")
        return JSONResponse(catalog_entry(offer, schema=True))

    async def _list(self, request: Request) -> Response:
        self._account(request)
        problems, listing = list_models(self.state.offers.values(), request.query_params)
        if problems:
            return api_error(422, 422001, "invalid query parameters", problems)
        return JSONResponse(listing)

    async def _categories(self, request: Request) -> Response:
        self._account(request)
        names = sorted({c for o in self.state.offers.values() for c in o.categories})
        return JSONResponse({"categories": names})

    # -- outputs and admin --------------------------------------------------------------------

    async def download(self, request: Request) -> Response:
        arrived = self.state.arrived("download")
        response = await self._download(request)
        self.state.request_log.append((arrived, "download", response.status_code))
        return response

    async def _download(self, request: Request) -> Response:
        dice = self.state.dice
        slow = dice.roll("slow", "download")
        if slow is not None:
            await anyio.sleep(slow.param("delay"))
        self.farm.advance()
        job = self.farm.by_token.get(request.path_params["token"])
        if job is None or job.state != "succeeded" or job.finished_at is None:
            return Response("Not Found", status_code=404, media_type="text/plain")
        ttl = 0.0 if "early_expiry" in job.faults else self.state.config.output_ttl
        if self.state.config.clock() >= job.finished_at + ttl:
            return Response("Gone: this output has expired", status_code=410)
        made = self.state.output(job)
        try:
            rendered = await anyio.to_thread.run_sync(lambda: self.state.render(job, made))
        except OSError as exc:  # the emulator's own disk refused the render: a 5xx, not a crash
            why = f"cannot render the output: {exc.strerror or exc}"
            return Response(why, status_code=503, media_type="text/plain")
        if request.method == "GET":
            self.farm.downloaded(job)
        headers = {"etag": rendered.etag, "cache-control": "private, no-transform"}
        if request.method == "GET" and dice.roll("truncated_download", "download"):
            fault = self.state.dice.profile.faults["truncated_download"]
            cut = int(rendered.size * fault.param("fraction"))
            log.warning("fault truncated_download: %d of %d bytes", cut, rendered.size)
            body = rendered.path.read_bytes()[:cut]
            if not fault.param("content_length"):
                chunks = iter([body])
                return StreamingResponse(chunks, media_type=made.content_type, headers=headers)
            return TruncatedResponse(body, rendered.size, headers, made.content_type)
        return FileResponse(rendered.path, media_type=made.content_type, headers=headers)

    async def balance(self, request: Request) -> Response:
        """The token's account balance: what the ledger has not billed yet."""
        try:
            account = self._account(request)
        except _Refused as refused:
            return refused.response
        self.farm.advance()
        return JSONResponse({"balance_usd": round(account.balance_usd, 6), "currency": "USD"})

    async def ledger(self, request: Request) -> Response:
        return JSONResponse(self.state.ledger())

    async def requests(self, request: Request) -> Response:
        """Requests served since this state began, by endpoint (not kept across a restart)."""
        return JSONResponse(dict(self.state.requests))

    async def restart(self, request: Request) -> Response:
        forgotten = len(self.farm.jobs)
        self.farm.forget()
        log.warning("restart: forgot %d job(s)", forgotten)
        return JSONResponse({"forgotten": forgotten})

    def _urls(self, request: Request, job: Job) -> dict[str, str]:
        base = f"{_origin(request)}/v1/requests/{job.request_id}"
        return {
            "status_url": f"{base}/status",
            "result_url": f"{base}/result",
            "cancel_url": f"{base}/cancel",
        }


_BAD_COSTS: dict[str, Any] = {"cost_null": None, "cost_negative": -0.25, "cost_nan": "NaN"}


def _misreport_cost(body: dict[str, Any], faults: frozenset[str]) -> None:
    """The cost faults: a result whose cost is null, negative, not a number, or missing."""
    if "cost_missing" in faults:
        del body["cost"]
    for name, value in _BAD_COSTS.items():
        if name in faults:
            body["cost"] = value


def _origin(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _status_word(job: Job) -> str:
    """The status endpoint's word for a job, in the spelling its faults pick."""
    faults, state = job.faults, job.state
    if state == "in_queue":
        return "pending" if "spell_pending" in faults else "in_queue"
    if state == "in_progress":
        return "processing" if "spell_processing" in faults else "in_progress"
    if state == "cancelled":
        return "canceled" if "spell_canceled" in faults else "cancelled"
    if "spell_succeeded" in faults:
        return state  # succeeded / failed, which RunComfy's CLI also reads as terminal
    return "completed"


def _result_word(job: Job) -> str:
    if job.state == "succeeded":
        return "completed" if "spell_completed" in job.faults else "succeeded"
    if job.state == "failed":
        return "failed"
    return _status_word(job)
