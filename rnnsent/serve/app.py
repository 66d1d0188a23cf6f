"""The HTTP API and demo page: a FastAPI app around one loaded model (create_app), for uvicorn or any ASGI server.

    POST /v1/predict  {"texts": [...]} -> {"results": [rnnsent predict --json's object per text]}
    POST /v1/explain  {"texts": [...]} -> {"results": [rnnsent.explain's Explanation.to_json() per text]}
    GET  /v1/model    the model: cell, layers, parameters, vocabulary, labels, metrics, limits
    GET  /healthz     the process answers;   GET /readyz: the model is loaded and warmed up
    GET  /            the demo page;         GET /docs: the OpenAPI page

Every error is {"error": "one line"} with a 4xx status (5xx only for the server's own faults). Requests are
read into memory within --max-body-bytes and answered from it; nothing a request sends is written to disk.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.resources
import importlib.util
import json
import logging
import math
from pathlib import Path
from typing import Any

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ModuleNotFoundError as e:  # the `serve` extra is not installed
    raise ModuleNotFoundError(f"rnnsent serve needs FastAPI and uvicorn ({e.name} is missing): "
                              "pip install 'rnnsent[serve]'", name=e.name) from None

from rnnsent.inference.evaluate import class_names
from rnnsent.serve.batcher import DynamicBatcher, Unavailable
from rnnsent.serve.settings import ServeSettings

log = logging.getLogger(__name__)
WARM_UP_TEXTS = ["A warm-up review, not answered to anyone.", ""]


class ApiError(Exception):
    """An answer other than 200: its status and the one line the client reads."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class SafeJSONResponse(JSONResponse):
    """JSON in ASCII: a text echoed back may hold lone surrogates ("\\ud800" in the request), which UTF-8
    cannot encode; escaped, every string the request could carry goes back out as valid JSON."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error(status: int, message: str) -> SafeJSONResponse:
    return SafeJSONResponse({"error": message}, status_code=status)


# ---- request and response models (validation, and the OpenAPI page's schemas) ----

class TextsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(min_length=1, description="review texts (plain strings)",
                                   examples=[["A moving film.", "Dull."]])


class ExplainRequest(TextsRequest):
    target: StrictStr | None = Field(None, description="the class to attribute toward, by name [the second of two "
                                                      "(positive for IMDB), else the predicted one]")


class PredictResult(BaseModel):
    probability: float = Field(description="two classes: P(the positive class: the second, positive for IMDB, "
                                           "unless the model names another); more: P(the predicted class)")
    label: str
    text: str
    words: int = Field(description="words and punctuation marks in the text")
    oov_share: float = Field(description="share of those outside the vocabulary")
    note: str | None = Field(description='"empty", "no known words", or null')
    probabilities: dict[str, float] = Field(description="every class's probability")


class PredictResponse(BaseModel):
    results: list[PredictResult]


class ExplainResponse(BaseModel):
    results: list[dict[str, Any]] = Field(description="rnnsent.inference.explain's Explanation.to_json() for each text")


def _one_line(exc: ValidationError | RequestValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}".replace("\n", " ")


def parse_texts(body: bytes, model: type[TextsRequest], max_texts: int, max_chars: int) -> TextsRequest:
    """The request's texts, checked against the limits before anything is tokenized; ApiError otherwise."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise ApiError(400, "the body is JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8 text") from None
    except ValueError as e:  # JSONDecodeError, and an integer past Python's digit limit
        raise ApiError(400, f"the body is not valid JSON: {str(e).splitlines()[0]}") from None
    texts = data.get("texts") if isinstance(data, dict) else None
    if isinstance(texts, list) and len(texts) > max_texts:  # before validating a long list item by item
        raise ApiError(413, f"texts: {len(texts)} texts, at most {max_texts} per request")
    try:
        request = model.model_validate(data)
    except ValidationError as e:
        raise ApiError(422, _one_line(e)) from None
    for i, text in enumerate(request.texts):
        if len(text) > max_chars:
            raise ApiError(413, f"texts.{i}: {len(text)} characters, at most {max_chars} per text")
    return request


# ---- the request body, bounded in size and time before any route sees it ----

class BodyLimit:
    """Pure ASGI middleware: a POST body is read whole (at most max_bytes, within timeout_s) before the route
    runs, so an over-long body costs no more than the limit and a slow client holds only its own request."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            status, why = (413, f"the body is over {self.max_bytes} bytes") if declared.isdigit() else (
                400, "the Content-Length header is not a number")
            return await error(status, why)(scope, receive, send)
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout_s)
        except TimeoutError:
            return await error(408, f"the body took more than {self.timeout_s:g} s to arrive")(scope, receive, send)
        except _TooLarge:
            return await error(413, f"the body is over {self.max_bytes} bytes")(scope, receive, send)
        if body is None:  # the client went away
            return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class _TooLarge(Exception):
    pass


# ---- the model's side: what runs on the worker thread ----

# A forward step over B rows of the same length costs about (STEP_ROWS + B) rows' work: the step's fixed cost (the
# kernel's launch and loop) is worth a few rows (measured with the released GRU on one CPU thread: one row 8.8 us a
# step, 16 rows 44 us). Padding costs as much as real rows, hence the buckets below.
STEP_ROWS = 3


def length_buckets(lengths: list[int], max_batch: int, step_rows: float = STEP_ROWS) -> list[list[int]]:
    """Indices of `lengths` cut into forwards of at most max_batch texts with the least padded work: sorted by length,
    then the cuts that minimise the sum over forwards of longest length x (step_rows + texts), found exactly by
    dynamic programming over the sorted order (a few thousand steps for a batch of 64)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    sorted_lengths = [lengths[i] for i in order]
    n = len(order)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for j in range(1, n + 1):  # best[j]: the cheapest forwards for the j shortest texts
        for i in range(max(0, j - max_batch), j):
            cost = best[i] + sorted_lengths[j - 1] * (step_rows + j - i)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def predict_work(loaded, max_batch: int):
    """work(texts) -> Predictions, for the batcher: each text tokenized once, the texts cut into length buckets
    (length_buckets) and run as one forward per bucket; the answers go back in the texts' order."""
    def work(texts: list[str]) -> list:
        return loaded.predict(texts, groups=lambda steps: length_buckets(steps, max_batch))

    return work


def _import_explain():
    """rnnsent.inference.explain's explain(), or ApiError 501 when it (or Captum under it) is not installed."""
    try:
        from rnnsent.inference.explain import explain
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name == "rnnsent.inference.explain":
            raise ApiError(501, "explanations need rnnsent.explain, which this rnnsent does not have") from None
        raise ApiError(501, f"explanations are not available: {str(e).splitlines()[0]}") from None
    return explain


def _released_entry(path: Path | None) -> dict | None:
    """RESULTS.json's entry (test accuracy, training command) when the model is one of the released files."""
    from rnnsent.inference.loading import RELEASED

    if path is None or path.resolve().parent != RELEASED.resolve():
        return None
    try:
        return json.loads((RELEASED / "RESULTS.json").read_text()).get(path.stem)
    except (OSError, ValueError):
        return None


def model_info(loaded, settings: ServeSettings) -> dict:
    from rnnsent.model.sentiment import count_parameters

    m = loaded.model
    metrics = {k: v for k, v in loaded.metrics.items()
               if isinstance(v, (int, str)) or isinstance(v, float) and math.isfinite(v)}
    return {
        "checkpoint": loaded.path.name if loaded.path else None,
        "cell": m.cell,
        "layers": getattr(m.rnn, "num_layers", 1),
        "parameters": count_parameters(m),
        "vocab_size": m.vocab_size,
        "embed_dim": m.embed_dim,
        "hidden_size": m.hidden_size,
        "labels": class_names(m.num_classes, loaded.classes),
        "encoding": loaded.encoding,
        "max_len": loaded.max_len,
        "metrics": metrics,
        "released": _released_entry(loaded.path),
        # two classes: the positive class is answered where its probability is at least the threshold (None: argmax)
        "threshold": loaded.threshold, "positive_label": loaded.positive_label,
        "limits": {"max_body_bytes": settings.max_body_bytes, "max_texts": settings.max_texts,
                   "max_chars": settings.max_chars, "max_explain_texts": settings.max_explain_texts},
        "batching": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms},
    }


# ---- the app ----

def create_app(loaded, settings: ServeSettings | None = None, **overrides) -> FastAPI:
    """The ASGI app serving `loaded` (rnnsent.load_checkpoint's LoadedModel). settings (or keyword overrides of
    ServeSettings' fields: max_batch=, max_wait_ms=, ...) bound batching and requests; host and port are the
    server's business. Run it with uvicorn: `uvicorn.run(create_app(loaded))`, one worker per model copy."""
    settings = dataclasses.replace(settings or ServeSettings(), **overrides)
    batcher = DynamicBatcher(predict_work(loaded, settings.max_batch), settings.max_batch, settings.max_wait_ms,
                             settings.max_queue)
    served = _Served(loaded, settings, batcher)
    app = FastAPI(title="rnnsent", summary="Sentiment (or your own classes) of texts with an rnnsent model",
                  lifespan=_lifespan(served), default_response_class=SafeJSONResponse)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.state.batcher, app.state.settings = batcher, settings
    _add_error_handlers(app)
    _add_status_routes(app, served)
    _add_predict_route(app, served)
    _add_explain_route(app, served)
    return app


@dataclasses.dataclass
class _Served:
    """What the routes share: the model, the settings, its batcher, and what the app has found out since it started."""

    loaded: Any
    settings: ServeSettings
    batcher: DynamicBatcher
    ready: bool = False  # the warm-up forward has finished
    explain: bool | None = None  # explanations work (None: not known yet)


def _lifespan(served: _Served):
    """The app's lifespan: the batcher runs from startup to shutdown, and a warm-up forward makes the app ready."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        served.batcher.start()

        async def warm_up():  # the first forward loads the fused kernel and sizes the allocator
            await served.batcher.submit(WARM_UP_TEXTS)
            served.explain = all(importlib.util.find_spec(m) is not None
                                 for m in ("rnnsent.inference.explain", "captum"))
            served.ready = True

        task = asyncio.create_task(warm_up())
        try:
            yield
        finally:
            served.ready = False
            if not task.done():
                task.cancel()
            await served.batcher.stop()

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as {"error": "one line"}: ours, invalid requests, Starlette's (404, 405), and our own faults."""

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        return error(422, _one_line(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail).splitlines()[0] if exc.detail else "error")

    @app.exception_handler(Exception)
    async def _fault(request, exc: Exception):  # a bug of ours: the log has the traceback, the client one line
        log.exception("request failed")
        return error(500, f"internal error ({type(exc).__name__}); the server log has the details")


def _add_status_routes(app: FastAPI, served: _Served) -> None:
    """The demo page, /healthz, /readyz and /v1/model."""
    info = model_info(served.loaded, served.settings)
    page = importlib.resources.files("rnnsent.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                                                      "script-src 'unsafe-inline'"})

    @app.get("/healthz")
    async def healthz() -> dict:
        """The process is up and answering (the model may still be warming up: see /readyz)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "still warming up"}})
    async def readyz():
        """200 once the model is loaded and has run its warm-up forward; 503 before."""
        if not served.ready:
            return error(503, "warming up: the model's first forward has not finished")
        return {"status": "ready"}

    @app.get("/v1/model")
    async def model() -> dict:
        """The model behind the API: cell, layers, parameters, vocabulary, labels, its metrics and the limits."""
        batcher = served.batcher
        return {**info, "explain": served.explain, "batches": batcher.batches, "batched_texts": batcher.texts}


# The POST bodies are parsed by the routes rather than by FastAPI, so that `curl -d '{...}'` (a form content type)
# works and each problem gets one line; _body_schema() still gives /docs the schema.
def _body_schema(model: type[BaseModel]) -> dict:
    """The OpenAPI requestBody of a route that reads a `model` from its JSON body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _add_predict_route(app: FastAPI, served: _Served) -> None:
    """POST /v1/predict: the texts join the batcher's queue and share forward passes with other requests."""
    settings = served.settings

    @app.post("/v1/predict", response_model=PredictResponse, openapi_extra=_body_schema(TextsRequest))
    async def predict(request: Request):
        """Label, probability, every class's probability and predict's note for each text (the keys of
        `rnnsent predict --json`), in the order given. Concurrent requests share forward passes."""
        texts = parse_texts(await request.body(), TextsRequest, settings.max_texts, settings.max_chars).texts
        try:
            predictions = await served.batcher.submit(texts)
        except Unavailable as e:
            raise ApiError(503, str(e)) from None
        # A Response as it is: response_model documents the shape, and validating our own output again costs
        # more per request than parsing it did.
        return SafeJSONResponse({"results": [p.to_json(t) for t, p in zip(texts, predictions)]})


def _add_explain_route(app: FastAPI, served: _Served) -> None:
    """POST /v1/explain: integrated gradients on the model's thread; 501 without Captum (/v1/model then says so)."""
    settings = served.settings

    @app.post("/v1/explain", response_model=ExplainResponse, openapi_extra=_body_schema(ExplainRequest),
              responses={501: {"description": "rnnsent.explain or Captum is not installed"}})
    async def explain(request: Request):
        """Each word's attribution to the class (integrated gradients, rnnsent.explain), with the prediction."""
        req = parse_texts(await request.body(), ExplainRequest, settings.max_explain_texts, settings.max_chars)

        def run():  # on the model's thread, between batches
            explain_fn = _import_explain()  # (importing Captum takes a while: not on the event loop)
            try:
                found = explain_fn(served.loaded, req.texts, target=req.target, method="ig",
                                   steps=settings.explain_steps)
            except ImportError as e:
                raise ApiError(501, f"explanations are not available: {str(e).splitlines()[0]}") from None
            except (ValueError, TypeError, KeyError) as e:  # a target the model does not have, and the like
                raise ApiError(422, str(e).splitlines()[0] if str(e) else type(e).__name__) from None
            return [x.to_json() for x in found]

        try:
            results = await served.batcher.on_worker(run)
        except ApiError as e:
            if e.status == 501:
                served.explain = False
            raise
        served.explain = True
        return SafeJSONResponse({"results": results})
