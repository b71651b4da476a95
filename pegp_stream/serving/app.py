"""The HTTP API (FastAPI on uvicorn): predictions on the newest snapshot, model info, operator boundary
requests, health, readiness and Prometheus metrics. Bad requests get a 4xx with a message, never a 5xx."""

from __future__ import annotations

import contextlib
import errno
import functools
import hmac
import resource
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Form, Header, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from pegp_stream.checkpoint import recorded_digest
from pegp_stream.config import HttpConfig
from pegp_stream.errors import ConfigError
from pegp_stream.inputs.decode import DecodeLimits, decode_image_bytes, decode_image_fields
from pegp_stream.serving.limits import BodyLimit, HeaderDeadline, PixelBudget
from pegp_stream.serving.metrics import build_registry
from pegp_stream.serving.page import STATUS_PAGE
from pegp_stream.serving.snapshot import SnapshotPublisher

if TYPE_CHECKING:
    from pegp_stream.serving.status import DaemonHandle


class Instance(BaseModel):
    """One image: `image` (an encoded file) or `pixels` with `shape` (raw uint8)."""

    model_config = ConfigDict(extra="forbid",
                              json_schema_extra={"anyOf": [{"required": ["image"]}, {"required": ["pixels"]}]})
    image: str | None = Field(None, description="base64 of PNG or JPEG bytes")
    pixels: str | None = Field(None, description="base64 of raw uint8 pixels; needs shape")
    shape: list[int] | None = Field(None, description="[H, W] or [H, W, C]")

    @model_validator(mode="after")
    def has_an_image(self) -> Instance:
        if self.image is None and self.pixels is None:
            raise ValueError("an instance needs 'image' (base64 PNG/JPEG) or 'pixels' with 'shape'")
        return self


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[Instance] = Field(min_length=1)
    top_k: int | None = Field(None, ge=1, le=100)


class ScoredLabel(BaseModel):
    label: str | int
    score: float


class PredictionOut(BaseModel):
    label: str | int | None
    score: float | None
    top_k: list[ScoredLabel]


class PredictResponse(BaseModel):
    model_version: int
    predictions: list[PredictionOut]


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong with the request")


# Answers of the GET routes. extra="allow": a key added to an answer passes through (declare it here too).
class ModelOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: int = Field(description="the served snapshot's version (learner updates); 0 before the first")
    classes: list[str | int] = Field(description="labels the served model knows, in head order")
    segments: int
    ranks: dict[str, int] = Field(description="basis rank per protected space")
    records_learned: int = Field(description="records the learner has learned (a replica: those in its snapshot)")
    records_in_model: int = Field(description="records learned into the served snapshot")
    updates: int | None = Field(None, description="the learner's update count (learner only)")
    lag: dict[str, int] = Field(description="records waiting per partition")
    last_checkpoint_time: float | None = Field(description="Unix time of the last checkpoint")
    paradigm: str | None = Field(None, description="PET paradigm (learner only)")
    backbone: str | None = Field(None, description="timm backbone (learner only)")
    offsets: dict[str, int] | None = Field(None, description="next offset per partition (learner only)")


class StatusOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: int
    curve: list[list[int | float]] = Field(
        description="[records learned, windowed, cumulative prequential accuracy] points")
    boundaries: list[int] = Field(description="records learned at the latest boundaries")
    segment_accuracy: dict[str, float]
    ranks: dict[str, int]
    throughput: float = Field(description="records learned per second, recently")
    lag: dict[str, int]
    records_learned: int
    dead_letters: dict[str, int] = Field(description="dead letters per reason")


class BoundaryOut(BaseModel):
    requested: bool


class HealthOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str = Field(description="'ok', or why not")


class ReadyOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str = Field(description="'ready', or why not")
    model_version: int | None = Field(None, description="the served snapshot's version (when ready)")


DOCS_ASSETS = "/docs-assets"
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 408, 413, 422, 503)}


def create_app(config: HttpConfig, snapshots: SnapshotPublisher, daemon: DaemonHandle | None = None,
               limits: DecodeLimits | None = None) -> FastAPI:
    """The app over `snapshots`; with `daemon` (a learner), its published status, checkpoints and operator
    boundaries too."""
    app = FastAPI(title="pegp-stream", version="1", description=__doc__, docs_url=None, redoc_url=None)
    registry, serving = build_registry(daemon, snapshots)
    limits = limits or DecodeLimits()
    app.state.registry = registry

    app.state.http_config = config  # HttpServer takes its connection limits from here
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, timeout_s=config.request_timeout_s)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(problems)[:2000]}, status_code=422)

    @contextlib.contextmanager
    def counted() -> Iterator[None]:
        """Count the request by its status code and time it."""
        started, code = time.perf_counter(), 200
        try:
            yield
        except HTTPException as exc:
            code = exc.status_code
            raise
        finally:
            serving.requests.labels(str(code)).inc()
            serving.duration.observe(time.perf_counter() - started)

    @app.post("/v1/predict", response_model=PredictResponse, responses=ERRORS)
    def predict(body: PredictRequest) -> Any:
        with counted():
            return _predict(body)

    @app.post("/v1/predict/files", response_model=PredictResponse, responses=ERRORS)
    def predict_files(files: list[UploadFile], top_k: int | None = Form(None, ge=1, le=100)) -> Any:
        """The same prediction for PNG/JPEG files sent as multipart/form-data (field name `files`)."""
        with counted():
            if len(files) > config.max_instances:
                raise HTTPException(413, f"{len(files)} files; max_instances={config.max_instances}")
            budget = PixelBudget(limits, config.max_request_pixels)
            images = [budget.decode(decode_image_bytes, upload.file.read(limits.max_record_bytes + 1),
                                    f"files[{i}] ({upload.filename}): ") for i, upload in enumerate(files)]
            return _answer(images, top_k)

    def _predict(body: PredictRequest) -> dict:
        if len(body.instances) > config.max_instances:
            raise HTTPException(413, f"{len(body.instances)} instances; max_instances={config.max_instances}")
        budget = PixelBudget(limits, config.max_request_pixels)
        images = [budget.decode(decode_image_fields, instance.model_dump(exclude_none=True), f"instances[{i}].")
                  for i, instance in enumerate(body.instances)]
        return _answer(images, body.top_k)

    def _answer(images: list, top_k: int | None) -> dict:
        predictor = snapshots.current
        if predictor is None:
            raise HTTPException(503, "no model snapshot published yet")
        batch = predictor.prepare(images)
        prediction = predictor.predict(batch)
        k = min(top_k or config.top_k, len(prediction.classes))
        answers: list[dict[str, Any]] = []
        for row in range(batch.shape[0]):
            if not prediction.classes:
                answers.append({"label": None, "score": None, "top_k": []})
                continue
            scores, indices = prediction.probs[row].topk(k)
            top = [{"label": prediction.classes[j], "score": float(s)} for s, j in zip(scores, indices.tolist(),
                                                                                     strict=True)]
            answers.append({"label": top[0]["label"], "score": top[0]["score"], "top_k": top})
        return {"model_version": predictor.info.version, "predictions": answers}

    @app.get("/v1/model", response_model=ModelOut, response_model_exclude_unset=True)
    def model() -> dict:
        predictor = snapshots.current
        info = predictor.info if predictor else None
        out: dict[str, Any] = {
            "version": info.version if info else 0, "classes": info.classes if info else [],
            "segments": info.segments if info else 0, "ranks": info.ranks if info else {},
            "records_learned": info.records_learned if info else 0,
            "records_in_model": info.records_learned if info else 0, "lag": {}, "last_checkpoint_time": None,
        }
        if daemon is not None:
            state = daemon.status
            out.update({"paradigm": state.paradigm, "backbone": state.backbone,
                        "records_learned": state.learned, "updates": state.updates,
                        "lag": {str(p): n for p, n in state.lag.items()},
                        "offsets": {str(p): o for p, o in state.offsets.items()},
                        "last_checkpoint_time": state.last_checkpoint.get("time")})
        return out

    @app.post("/v1/boundary", status_code=202, response_model=BoundaryOut,
              responses={code: {"model": ErrorResponse} for code in (401, 403, 404, 408, 413, 422)})
    def boundary(authorization: str | None = Header(None)) -> dict:
        if daemon is None or config.boundary_token is None:
            raise HTTPException(404, "operator boundaries are not enabled (set http.boundary_token)")
        expected = f"Bearer {config.boundary_token.get_secret_value()}"
        if authorization is None:
            raise HTTPException(401, "a bearer token is required")
        if not hmac.compare_digest(authorization.encode(), expected.encode()):
            raise HTTPException(403, "wrong token")
        daemon.request_boundary()
        return {"requested": True}

    @app.get("/v1/status", response_model=StatusOut)
    def status() -> dict:
        """What the status page draws: the prequential curve with boundaries, per-segment accuracy, ranks,
        throughput and lag."""
        predictor = snapshots.current
        out: dict[str, Any] = {"version": predictor.info.version if predictor else 0, "curve": [],
                               "boundaries": [], "segment_accuracy": {}, "ranks": {}, "throughput": 0.0,
                               "lag": {}, "records_learned": 0, "dead_letters": {}}
        if daemon is not None:
            state = daemon.status
            out.update({
                "curve": [list(point) for point in state.curve],
                "boundaries": list(state.boundary_positions),
                "segment_accuracy": {str(k): v for k, v in state.segment_accuracy.items()},
                "ranks": dict(state.ranks), "throughput": state.throughput,
                "lag": {str(p): n for p, n in state.lag.items()},
                "records_learned": state.learned, "dead_letters": dict(state.dead_letters),
            })
            if state.per_rank:  # several ranks: the fields above are the group's
                out["learner_ranks"] = [{"rank": share.rank, "read": share.read, "learned": share.learned,
                                         "lag": {str(p): n for p, n in share.lag.items()},
                                         "offsets": {str(p): o for p, o in share.offsets.items()},
                                         "throughput": share.throughput, "step_seconds": share.step_seconds}
                                        for share in state.per_rank]
        return out

    @app.get("/v1/checkpoint/latest", response_class=Response, responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
              "description": "the newest checkpoint file; headers ETag, X-Checkpoint-Sequence, X-Checkpoint-Sha256"},
        304: {"description": "If-None-Match names the newest checkpoint: nothing new"},
        404: {"model": ErrorResponse, "description": "no checkpoint yet, or this is a serving replica"},
        503: {"model": ErrorResponse, "description": "the checkpoint was pruned while being read; retry"}})
    def latest_checkpoint(if_none_match: str | None = Header(None)) -> Response:
        """The learner's newest checkpoint file, for replicas that follow it over HTTP (`serve --follow URL`).
        The ETag is the sha256 the file records, so an unchanged poll costs a directory listing and a header
        read. The bytes are sent as stored; the replica verifies them as a load from disk does."""
        if daemon is None:
            raise HTTPException(404, "a serving replica offers no checkpoints")
        paths = daemon.store.paths()
        if not paths:
            raise HTTPException(404, "no checkpoint to offer")
        path = paths[-1]
        try:  # a checkpoint file is never rewritten, only pruned: its header's digest names its bytes
            digest = recorded_digest(path)
            etag = f'"{digest}"'
            if if_none_match is not None and etag in {tag.strip() for tag in if_none_match.split(",")}:
                return Response(status_code=304, headers={"ETag": etag})
            data = path.read_bytes()
        except FileNotFoundError:
            raise HTTPException(503, f"{path.name} was pruned while being read; retry") from None
        headers = {"ETag": etag, "X-Checkpoint-Sequence": str(daemon.store.sequence_of(path)),
                   "X-Checkpoint-Sha256": digest}
        return Response(data, media_type="application/octet-stream", headers=headers)
    serve_docs(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return STATUS_PAGE

    @app.get("/healthz", response_model=HealthOut,
             responses={503: {"model": HealthOut, "description": "the learner loop is silent"}})
    def healthz() -> Any:
        if daemon is not None and time.monotonic() - daemon.status.heartbeat > config.stall_after_s:
            return JSONResponse({"status": "learner loop silent"}, status_code=503)
        return {"status": "ok"}

    @app.get("/readyz", response_model=ReadyOut, response_model_exclude_unset=True,
             responses={503: {"model": ReadyOut,
                              "description": "no warmed snapshot yet, or the learner is not ready: waiting for its "
                              "topic, broker silent, checkpoints failing, or stalled"}})
    def readyz() -> Any:
        if snapshots.current is None or not snapshots.current.warmed:
            return JSONResponse({"status": "no warmed snapshot yet"}, status_code=503)
        problem = daemon.status.not_ready(time.monotonic()) if daemon is not None else None
        if problem is not None:
            return JSONResponse({"status": problem}, status_code=503)
        return {"status": "ready", "model_version": snapshots.current.info.version}

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition"}})
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def serve_docs(app: FastAPI) -> None:
    """Swagger UI at /docs with its script and style from the swagger-ui-bundle-v2 package, not a CDN:
    clusters are often offline."""
    openapi_url = app.openapi_url
    if openapi_url is None:
        raise ValueError("Swagger UI needs the app's OpenAPI schema, and this app has openapi_url=None")
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")


class HttpServer:
    """uvicorn in a background thread; `start` returns once it listens (port 0 picks a free port). Connection
    limits come from the app's HttpConfig (`create_app` puts it on `app.state`): requests beyond
    `max_connections` get 503, a deadline for each request's headers and body parts, idle keep-alive
    connections closed after `keep_alive_s`, and connections beyond half the process's file descriptor limit
    dropped at once, so the learner keeps the other half. A port that cannot be bound raises ConfigError."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        import uvicorn

        config: HttpConfig = app.state.http_config
        self.socket = _listening_socket(host, port)
        self.host, self.port = host, self.socket.getsockname()[1]
        share = _descriptor_limit() // 2  # the HTTP side's file descriptors; the learner keeps the other half
        backlog = min(2048, share // 2)  # asyncio accepts up to `backlog` sockets before any is dropped
        self.server = uvicorn.Server(uvicorn.Config(
            app, log_level="warning", access_log=False, limit_concurrency=config.max_connections, backlog=backlog,
            timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]  # uvicorn takes any number
            # uvicorn calls `http` as a protocol factory; its annotation asks for a class, and a partial is none
            http=functools.partial(HeaderDeadline, timeout_s=config.request_timeout_s,  # type: ignore[arg-type]
                                   max_open=share - backlog),
        ))
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> HttpServer:
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)


def _descriptor_limit() -> int:
    """The process's soft limit on open file descriptors."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 2**20 if soft == resource.RLIM_INFINITY else soft


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port; a failure is a ConfigError on `http.port` (in use, not permitted) or
    `http.host` (no such address), not a traceback."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError("http.port", f"{host}:{port} is in use by another process") from None
        if exc.errno == errno.EACCES:
            raise ConfigError("http.port", f"{host}:{port} needs privileges to listen on") from None
        raise ConfigError("http.host", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock
