"""The FastAPI application: the REST API (/v1/predict, /v1/model), /healthz, /metrics and the web page at /.

    app = create_app(load_model("runs/celeba40"), ServeSettings(max_batch=32))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Every refusal is a 4xx with {"error": "..."}; an unexpected failure is a 500 with the same shape, logged.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Callable

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from attrnet.data.images import decode_image_bytes, resize_image
from attrnet.errors import AttrnetError
from attrnet.inference.faces import model_crops
from attrnet.inference.predictor import Predictor
from attrnet.report.jsonable import to_jsonable
from attrnet.serve.batching import Batcher
from attrnet.serve.settings import ServeSettings
from attrnet.serve.telemetry import MetricsMiddleware, ServerMetrics
from attrnet.serve.uploads import FILE_FIELD, Upload, UploadError, check_image_header, read_uploads

log = logging.getLogger(__name__)
API_KEY_HEADER = "X-API-Key"
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def create_app(model: Predictor, settings: ServeSettings | None = None,
               make_batcher: Callable[..., Any] = Batcher) -> FastAPI:
    """The application serving `model`; its batcher and decoding threads start with the app's lifespan.

    make_batcher(infer, max_batch, max_wait_ms, on_batch): what batches the images of concurrent requests into
    one forward pass (serve.batching.Batcher; under Ray Serve, serve.ray_serve.ServeBatcher), with start(), stop(),
    running and submit(images) -> probabilities."""
    settings = settings or ServeSettings()
    metrics = ServerMetrics()
    batcher = make_batcher(model.probabilities, settings.max_batch, settings.max_wait_ms, metrics.observe_batch)
    decoder = _Decoder(model, settings.decode_threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            decoder.close()

    app = FastAPI(title="attrnet", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.model, app.state.settings, app.state.metrics, app.state.batcher = model, settings, metrics, batcher
    _add_error_handlers(app)
    _add_routes(app, model, settings, metrics, batcher, decoder)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=[API_KEY_HEADER, "Authorization", "Content-Type"])
    app.add_middleware(SecurityHeaders)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: it sees every response
    return app


class _Decoder:
    """Header check, decoding and resizing of uploads in a thread pool, never on the event loop; for a face model,
    finding and aligning the faces there too (the detector made once, on first use)."""

    def __init__(self, model: Predictor, threads: int):
        self.info = model.info
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="attrnet-decode")
        self.detector = None
        self.device = model.device

    def decode_faces(self, upload: Upload) -> tuple[list[int], list, list[torch.Tensor]]:
        """(the photo's [width, height], its faces largest first, their crops as the model reads them)."""
        check_image_header(upload.data, upload.filename)
        try:
            pixels = decode_image_bytes(upload.data, False, name=upload.filename)
        except AttrnetError as exc:
            raise UploadError(422, f"{upload.filename}: not a readable image ({exc})") from None
        if self.detector is None:  # one at a time: the pool's threads may race to make it, harmlessly
            from attrnet.faces.detect import FaceDetector  # the faces extra, checked when the app was made
            self.detector = FaceDetector(self.device)
        faces = self.detector.detect([pixels])[0]
        return [int(pixels.shape[-1]), int(pixels.shape[-2])], faces, model_crops(pixels, faces, self.info.preprocessing)

    async def decode_all_faces(self, uploads: list[Upload]) -> list[tuple[list[int], list, list[torch.Tensor]]]:
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(self.pool, self.decode_faces, up) for up in uploads),
                                       return_exceptions=True)
        return _raise_upload_errors(uploads, results)

    def decode(self, upload: Upload) -> torch.Tensor:
        check_image_header(upload.data, upload.filename)
        try:
            img = decode_image_bytes(upload.data, self.info.grayscale, name=upload.filename)
        except AttrnetError as exc:
            raise UploadError(422, f"{upload.filename}: not a readable image ({exc})") from None
        return resize_image(img, tuple(self.info.image_size), self.info.resize)

    async def decode_all(self, uploads: list[Upload]) -> list[torch.Tensor]:
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(self.pool, self.decode, up) for up in uploads),
                                       return_exceptions=True)
        return _raise_upload_errors(uploads, results)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _raise_upload_errors(uploads: list[Upload], results: list) -> list:
    """The results, or the request's refusal naming every file that could not be used."""
    errors = [(up, r) for up, r in zip(uploads, results) if isinstance(r, BaseException)]
    for _, r in errors:
        if not isinstance(r, UploadError):
            raise r
    if errors:
        raise _FilesError(errors)
    return list(results)


class _FilesError(UploadError):
    """One or more files of a request could not be used: the first one's status, every file's reason."""

    def __init__(self, errors: list[tuple[Upload, UploadError]]):
        what = "; ".join(e.message for _, e in errors)
        prefix = f"{len(errors)} files could not be used: " if len(errors) > 1 else ""
        super().__init__(errors[0][1].status, prefix + what)
        self.files = [{"file": up.filename, "error": e.message} for up, e in errors]


def _add_routes(app: FastAPI, model: Predictor, settings: ServeSettings, metrics: ServerMetrics,
                batcher, decoder: _Decoder) -> None:
    require_key = _key_check(settings.api_key)
    description = model_description(model, settings)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(_static("index.html"), media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(404, f"no such file: /static/{name}")
        return Response(_static(name), media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ok = batcher.running
        return JSONResponse({"status": "ok" if ok else "starting"}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/model", dependencies=[Depends(require_key)])
    async def describe() -> dict:
        return description

    @app.post("/v1/predict", dependencies=[Depends(require_key)])
    async def predict(request: Request, faces: str = "auto") -> dict:
        use_faces = _faces_wanted(model, faces)  # before the body is read: a wrong ?faces= costs nothing
        uploads = await read_uploads(request.stream(), request.headers.get("content-type"),
                                     request.headers.get("content-length"), settings.max_upload_bytes,
                                     settings.max_files, settings.upload_timeout_s)
        if use_faces:
            found = await decoder.decode_all_faces(uploads)
            crops = [c for _, _, cs in found for c in cs]
            probs = await batcher.submit(crops) if crops else np.zeros((0, len(model.attributes)))
            return faces_response(model, [up.filename for up in uploads], found, probs)
        images = await decoder.decode_all(uploads)
        probs = await batcher.submit(images)
        return prediction_response(model, [up.filename for up in uploads], probs)


def prediction_response(model: Predictor, files: list[str], probs: np.ndarray) -> dict:
    """{"attributes", "groups"?, "results": [{"file", "attributes": {name: {probability, threshold, decision}}}]}."""
    decisions = model.decisions(probs)
    results = [{"file": name, "attributes": _attribute_dict(model, row, dec)}
               for name, row, dec in zip(files, probs, decisions)]
    out: dict = {"attributes": model.attributes, "results": results}
    if model.info.groups:
        out["groups"] = model.info.groups
    return out


FACES_VALUES = ("auto", "true", "false")


def faces_available(model: Predictor) -> bool:
    """The model reads aligned faces and the faces extra is installed: /v1/predict finds faces in photos."""
    if model.info.preprocessing.input != "aligned_face" or not model.info.preprocessing.face_template:
        return False
    return importlib.util.find_spec("facenet_pytorch") is not None


def _faces_wanted(model: Predictor, value: str) -> bool:
    """?faces=auto (default: for a model of aligned faces), true or false; a 400 where it cannot be done."""
    if value not in FACES_VALUES:
        raise HTTPException(400, f"faces must be one of {', '.join(FACES_VALUES)}, got {value!r}")
    aligned = model.info.preprocessing.input == "aligned_face"
    if value == "true" and not aligned:
        raise HTTPException(400, "faces=true: this model was trained on whole images, not on aligned faces")
    if value != "false" and aligned and not faces_available(model):
        raise HTTPException(501, "finding faces needs facenet-pytorch on the server: pip install 'attrnet[faces]' "
                                 "(or send aligned crops with ?faces=false)")
    return value != "false" and aligned


def faces_response(model: Predictor, files: list[str], found: list, probs: np.ndarray) -> dict:
    """{"attributes", "groups"?, "results": [{"file", "size": [w, h], "faces": [{"box", "score", "landmarks",
    "attributes": {name: {probability, threshold, decision}}}]}]}, faces largest first."""
    rows = iter(zip(probs, model.decisions(probs)))
    results = []
    for name, (size, faces, _) in zip(files, found):
        items = []
        for face in faces:
            p, d = next(rows)
            items.append({"box": [round(float(v), 1) for v in face.box], "score": round(face.score, 4),
                          "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in face.landmarks],
                          "attributes": _attribute_dict(model, p, d)})
        results.append({"file": name, "size": size, "faces": items})
    out: dict = {"attributes": model.attributes, "results": results}
    if model.info.groups:
        out["groups"] = model.info.groups
    return out


def _attribute_dict(model: Predictor, probs: np.ndarray, decisions: np.ndarray) -> dict:
    return {a: {"probability": float(p), "threshold": float(t), "decision": int(d)}
            for a, p, t, d in zip(model.attributes, probs, model.thresholds, decisions)}


def model_description(model: Predictor, settings: ServeSettings) -> dict:
    """GET /v1/model: what the model predicts, how it reads an image, its test figures and the server's limits."""
    info = model.info
    metrics = to_jsonable(info.metrics) if info.metrics else None
    return {"attributes": model.attributes, "groups": info.groups,
            "thresholds": {a: float(t) for a, t in zip(model.attributes, model.thresholds)},
            "image_size": list(info.image_size), "grayscale": info.grayscale, "resize": info.resize,
            "tta": model.tta, "runtime": model.runtime, "kind": info.kind,
            "input": info.preprocessing.input, "faces": faces_available(model),
            "backbone": (info.config.get("model") or {}).get("backbone"),
            "data_format": (info.config.get("data") or {}).get("format"),
            "test_metrics": metrics,
            "majority_baseline": (metrics or {}).get("mean_majority_accuracy"),
            "limits": {"max_files": settings.max_files, "max_upload_bytes": settings.max_upload_bytes,
                       "max_batch": settings.max_batch, "field": FILE_FIELD},
            "auth": settings.api_key is not None}


def _key_check(api_key: str | None):
    async def require_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get(API_KEY_HEADER) or ""
        auth = request.headers.get("authorization") or ""
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, f"missing or wrong API key: send it in the {API_KEY_HEADER} header",
                                headers={"WWW-Authenticate": "Bearer"})
    return require_key


def _static(name: str) -> bytes:
    return resources.files("attrnet.serve").joinpath("static", name).read_bytes()


def _error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UploadError)
    async def refused(request: Request, exc: UploadError) -> JSONResponse:
        extra = {"files": exc.files} if isinstance(exc, _FilesError) else {}
        # a body refused before its end is left unread: the connection cannot carry another request
        headers = {"Connection": "close"} if exc.status in (408, 413) else None
        return _error(exc.status, exc.message, headers, **extra)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return _error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, f"bad request: {exc.errors()[:1]}")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server's log has the details")


class SecurityHeaders:
    """nosniff and no-referrer on every response (ASGI middleware)."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def add_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + self.HEADERS}
            await send(message)

        await self.app(scope, receive, add_headers)
