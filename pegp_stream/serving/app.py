"""The HTTP API (FastAPI on uvicorn): predictions on the newest snapshot, model info, operator boundary
requests, health, readiness and Prometheus metrics. Bad requests get a 4xx with a message, never a 5xx."""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Form, Header, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from ..checkpoint import recorded_digest
from ..config import HttpConfig
from ..metrics import build_registry
from ..stream.decode import DecodeError, DecodeLimits, decode_image_bytes, decode_image_fields
from ..stream.preprocess import to_model_input
from .page import STATUS_PAGE
from .snapshot import SnapshotPublisher

if TYPE_CHECKING:
    from ..daemon import Daemon


class Instance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str | None = Field(None, description="base64 of PNG or JPEG bytes")
    pixels: str | None = Field(None, description="base64 of raw uint8 pixels; needs shape")
    shape: list[int] | None = Field(None, description="[H, W] or [H, W, C]")


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


ERRORS = {code: {"model": ErrorResponse} for code in (400, 413, 422, 503)}


def create_app(config: HttpConfig, snapshots: SnapshotPublisher, daemon: Daemon | None = None,
               limits: DecodeLimits | None = None) -> FastAPI:
    app = FastAPI(title="pegp-stream", version="1", description=__doc__)
    registry, serving = build_registry(daemon, snapshots)
    limits = limits or DecodeLimits()
    app.state.registry = registry

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > config.max_body_bytes):
            return JSONResponse({"detail": f"body larger than {config.max_body_bytes} bytes"}, status_code=413)
        return await call_next(request)

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
            images = []
            for i, upload in enumerate(files):
                try:
                    images.append(decode_image_bytes(upload.file.read(limits.max_record_bytes + 1), limits))
                except DecodeError as exc:
                    raise HTTPException(400, f"files[{i}] ({upload.filename}): {exc}") from None
            return _answer(images, top_k)

    def _predict(body: PredictRequest) -> dict:
        if len(body.instances) > config.max_instances:
            raise HTTPException(413, f"{len(body.instances)} instances; max_instances={config.max_instances}")
        images = []
        for i, instance in enumerate(body.instances):
            try:
                images.append(decode_image_fields(instance.model_dump(exclude_none=True), limits))
            except DecodeError as exc:
                raise HTTPException(400, f"instances[{i}].{exc}") from None
        return _answer(images, body.top_k)

    def _answer(images: list, top_k: int | None) -> dict:
        predictor = snapshots.current
        if predictor is None:
            raise HTTPException(503, "no model snapshot published yet")
        spec = predictor.input_config
        batch = to_model_input(images, predictor.input_size, spec["mean"], spec["std"])
        prediction = predictor.predict(batch)
        k = min(top_k or config.top_k, len(prediction.classes))
        answers = []
        for row in range(batch.shape[0]):
            if not prediction.classes:
                answers.append({"label": None, "score": None, "top_k": []})
                continue
            scores, indices = prediction.probs[row].topk(k)
            top = [{"label": prediction.classes[j], "score": float(s)} for s, j in zip(scores, indices.tolist(),
                                                                                     strict=True)]
            answers.append({"label": top[0]["label"], "score": top[0]["score"], "top_k": top})
        return {"model_version": predictor.info.version, "predictions": answers}

    @app.get("/v1/model")
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
            learner = daemon.learner.config
            out.update({"paradigm": learner.pet.kind, "backbone": learner.backbone.name,
                        "records_learned": daemon.stats.learned, "updates": daemon.learner.updates,
                        "lag": {str(p): n for p, n in daemon.cached_lag().items()},
                        "offsets": {str(p): o for p, o in daemon.offsets.items()},
                        "last_checkpoint_time": daemon.last_checkpoint.get("time")})
        return out

    @app.post("/v1/boundary", status_code=202,
              responses={code: {"model": ErrorResponse} for code in (401, 403, 404, 413, 422)})
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

    @app.get("/v1/status")
    def status() -> dict:
        """What the status page draws: the prequential curve with boundaries, per-segment accuracy, ranks,
        throughput and lag."""
        predictor = snapshots.current
        out: dict[str, Any] = {"version": predictor.info.version if predictor else 0, "curve": [],
                               "boundaries": [], "segment_accuracy": {}, "ranks": {}, "throughput": 0.0,
                               "lag": {}, "records_learned": 0, "dead_letters": {}}
        if daemon is not None:
            out.update({
                "curve": [list(point) for point in list(daemon.curve)],
                "boundaries": list(daemon.stats.boundary_positions),
                "segment_accuracy": {str(k): v for k, v in daemon.prequential.segment_accuracy().items()},
                "ranks": daemon.learner.ranks, "throughput": daemon.throughput(),
                "lag": {str(p): n for p, n in daemon.cached_lag().items()},
                "records_learned": daemon.stats.learned, "dead_letters": dict(daemon.stats.dead_letters),
            })
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
        paths = daemon.store.paths() if daemon is not None else []
        if not paths:
            raise HTTPException(404, "no checkpoint to offer" if daemon else "a serving replica offers no checkpoints")
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

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return STATUS_PAGE

    @app.get("/healthz", responses={503: {"description": "the learner loop is silent"}})
    def healthz() -> Any:
        if daemon is not None and time.monotonic() - daemon.heartbeat > config.stall_after_s:
            return JSONResponse({"status": "learner loop silent"}, status_code=503)
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "no warmed snapshot yet, or the learner is not ready: "
                                                        "waiting for its topic, broker silent, checkpoints "
                                                        "failing, or stalled"}})
    def readyz() -> Any:
        if snapshots.current is None or not snapshots.current.warmed:
            return JSONResponse({"status": "no warmed snapshot yet"}, status_code=503)
        problem = daemon.not_ready() if daemon is not None else None
        if problem is not None:
            return JSONResponse({"status": problem}, status_code=503)
        return {"status": "ready", "model_version": snapshots.current.info.version}

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition"}})
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


class HttpServer:
    """uvicorn in a background thread; `start` returns once it listens (port 0 picks a free port)."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        import socket

        import uvicorn

        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.host, self.port = host, self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> HttpServer:
        import threading

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
