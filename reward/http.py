"""The reward service over HTTP (FastAPI + uvicorn), bearer-token authenticated.

Endpoints: ``POST /score`` (our format), ``POST /openrlhf`` (OpenRLHF's remote reward),
``GET /health`` (no token; says only "ok"). Every other path needs
``Authorization: Bearer <token>``: missing -> 401, wrong -> 403. Bodies over
``max_body_bytes`` -> 413; a body not received within ``body_timeout_s`` -> 408 (connection
closed); schema errors -> 422 naming the field; scoring slower than ``request_timeout_s`` -> 504;
a judge endpoint that is down or past ``llm_deadline_s`` -> 502. Batches that need a remote judge
(``llm_judge``) score on their own threads, so a slow endpoint cannot starve the local judges.
:func:`server_config` bounds the connections: a request beyond ``max_connections`` open ones
-> 503, and a connection that sends no request within ``keep_alive_s`` is closed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Annotated, Any, Protocol

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from uvicorn.protocols.http.h11_impl import H11Protocol

from awares_rl.core.episode import RewardParts
from reward.config import RewardConfig
from reward.llm_judge import LLMJudgeError
from reward.openrlhf import openrlhf_requests, openrlhf_response
from reward.scoring import RewardRequest, uses_remote_judge

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})
CropId = Annotated[int, Field(ge=0, le=8)]


class Scorer(Protocol):
    def score(self, items: Sequence[RewardRequest]) -> list[RewardParts]: ...


class ScoreItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prediction: str | None  # the final answer; null = none (R_ans = 0)
    references: list[str] = Field(min_length=1)
    metric: str | None = None
    needs_high_res: bool | None = None
    crop_ids: list[CropId] = Field(default_factory=list, max_length=9)
    invalid_tool_call: str | None = None


class ScoreBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ScoreItem] = Field(min_length=1)


class OpenRLHFBody(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenRLHF may add keys in later releases
    query: list[str] = Field(min_length=1)
    prompts: list[str] | None = None
    labels: list[str | int | float | list[str] | dict[str, Any]]

    @model_validator(mode="after")
    def _aligned(self) -> OpenRLHFBody:
        n = len(self.query)
        if len(self.labels) != n or (self.prompts is not None and len(self.prompts) != n):
            raise ValueError(f"query ({n}), prompts and labels must have the same length")
        return self


def _json(status: int, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class BodyTooLargeError(Exception):
    """The request body grew past ``max_body_bytes`` while being read."""


class Guard:
    """ASGI middleware: bearer token first (401/403), then a bounded body (413 over
    ``max_body_bytes``, 408 when it is not in full ``body_timeout_s`` after the headers), then
    the app. ``close()`` shuts down the scoring threads ``create_app`` gave it."""

    def __init__(
        self, app: Callable, token: str, max_body_bytes: int, body_timeout_s: float = 10.0
    ) -> None:
        self.app, self.token, self.max_body = app, token.encode(), max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.executors: list[ThreadPoolExecutor] = []

    def _auth_error(self, header: bytes | None) -> JSONResponse | None:
        if not header or not header.lower().startswith(b"bearer "):
            return _json(
                401,
                "missing bearer token: send 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(header[7:].strip(), self.token):
            return _json(403, "invalid token")
        return None

    def _too_big(self) -> JSONResponse:
        return _json(413, f"request body over {self.max_body} bytes: send fewer items a request")

    def _header_error(self, headers: dict[bytes, bytes]) -> JSONResponse | None:
        error = self._auth_error(headers.get(b"authorization"))
        length = headers.get(b"content-length", b"0")
        if error is None and (not length.isdigit() or int(length) > self.max_body):
            error = self._too_big()
        return error

    async def _read_body(self, receive: Callable) -> bytes | None:
        """The whole body (None: the client left); raises BodyTooLargeError past ``max_body``."""
        body, more = bytearray(), True
        while more:  # read (bounded) before the app sees it: chunked bodies have no length header
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                raise BodyTooLargeError
        return bytes(body)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        error = self._header_error(dict(scope["headers"]))
        if error is None:
            try:
                body = await asyncio.wait_for(self._read_body(receive), self.body_timeout_s)
            except asyncio.TimeoutError:
                error = _json(
                    408,
                    f"request body not received in full within {self.body_timeout_s:g} s "
                    "(reward.body_timeout_s): send the whole body at once",
                    {"Connection": "close"},
                )
            except BodyTooLargeError:
                error = self._too_big()
            else:
                if body is None:
                    return None
                return await self.app(scope, _replay(body, receive), send)
        return await error(scope, receive, send)

    def close(self) -> None:
        """Stop the scoring threads (queued calls are cancelled, running ones finish)."""
        for executor in self.executors:
            executor.shutdown(wait=False, cancel_futures=True)


def _replay(body: bytes, receive: Callable) -> Callable[[], Awaitable[dict]]:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _validation_detail(exc: RequestValidationError) -> list[str]:
    return [".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in exc.errors()]


def create_app(scorer: Scorer, token: str, cfg: RewardConfig, max_inflight: int = 1) -> Guard:
    """The ASGI app: FastAPI routes behind :class:`Guard`. ``max_inflight`` scoring calls run at
    once (1 for an in-process scorer; ``num_workers`` for a Ray pool), on each of two thread
    pools: one for batches that need a remote judge, one for those that need only local ones."""
    if not token:
        raise ValueError(f"the reward service needs a token: set ${cfg.token_env}")
    app = FastAPI(title="awares-rl reward", docs_url=None, redoc_url=None, openapi_url=None)
    local = ThreadPoolExecutor(max_inflight, thread_name_prefix="reward-local")
    remote = ThreadPoolExecutor(max_inflight, thread_name_prefix="reward-remote")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _json(422, _validation_detail(exc))

    async def run(requests: list[RewardRequest]) -> list[RewardParts]:
        executor = remote if uses_remote_judge(requests, cfg) else local
        future = asyncio.get_running_loop().run_in_executor(executor, scorer.score, requests)
        try:
            return await asyncio.wait_for(future, cfg.request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(
                504,
                f"scoring took over {cfg.request_timeout_s:g} s: send fewer "
                "items or raise reward.request_timeout_s",
            ) from None
        except LLMJudgeError as e:
            raise HTTPException(502, str(e)) from None
        except ValueError as e:
            raise HTTPException(422, str(e)) from None

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/score")
    async def score(body: ScoreBody) -> dict:
        requests = [RewardRequest(**item.model_dump()) for item in body.items]
        return {"results": [asdict(p) for p in await run(requests)]}

    @app.post("/openrlhf")
    async def openrlhf(body: OpenRLHFBody) -> dict:
        try:
            requests = openrlhf_requests(body.query, body.prompts, body.labels)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        return openrlhf_response(await run(requests), requests)

    guard = Guard(app, token, cfg.max_body_bytes, cfg.body_timeout_s)
    guard.executors = [local, remote]  # serve() shuts them down
    return guard


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, also closing a connection that has sent no complete request
    ``timeout_keep_alive`` s after connecting (uvicorn arms that timer only after a response)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.loop.call_later(self.timeout_keep_alive, self._close_if_no_request)

    def _close_if_no_request(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            self.timeout_keep_alive_handler()


def server_config(
    app: Guard,
    cfg: RewardConfig,
    host: str | None = None,
    port: int | None = None,
    log_level: str = "info",
) -> uvicorn.Config:
    """uvicorn settings that bound every client: a request beyond ``cfg.max_connections`` open
    connections gets 503, idle connections close after ``cfg.keep_alive_s``."""
    return uvicorn.Config(
        app,
        host=host or cfg.host,
        port=cfg.port if port is None else port,
        http=BoundedH11Protocol,
        limit_concurrency=cfg.max_connections + 1,  # uvicorn refuses once connections >= limit
        timeout_keep_alive=cfg.keep_alive_s,  # type: ignore[arg-type]  (a float works)
        log_level=log_level,
    )


def resolve_token(cfg: RewardConfig, token: str | None = None) -> str:
    """``token`` or ``$cfg.token_env``; raises RuntimeError (refusing to start) when neither is set."""
    token = token or os.environ.get(cfg.token_env, "")
    if not token.strip():
        raise RuntimeError(
            f"refusing to start the reward service without a token: set {cfg.token_env}, e.g. "
            f"export {cfg.token_env}=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token.strip()


def serve(
    cfg: RewardConfig,
    host: str | None = None,
    port: int | None = None,
    token: str | None = None,
    local: bool = False,
) -> None:
    """Run the HTTP service until interrupted: a RewardPool of ``cfg.num_workers`` Ray actors
    (``ray.init()`` if needed), or, with ``local=True``, one in-process RewardService."""
    from reward.service import RewardPool, RewardService

    token = resolve_token(cfg, token)
    host, port = host or cfg.host, cfg.port if port is None else port
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "reward service bound to %s: reachable beyond this machine over plain HTTP; "
            "put TLS in front of it",
            host,
        )
    if local:
        scorer: Scorer = RewardService(cfg, num_threads=max(1, int(cfg.cpus_per_worker)))
        scorer.warmup()
    else:
        import ray

        if not ray.is_initialized():
            ray.init()
        scorer = RewardPool(cfg)
    app = create_app(scorer, token, cfg, max_inflight=1 if local else cfg.num_workers)
    log.info("reward service on http://%s:%d (judge %s)", host, port, cfg.judge)
    try:
        uvicorn.Server(server_config(app, cfg, host, port)).run()
    finally:
        app.close()
