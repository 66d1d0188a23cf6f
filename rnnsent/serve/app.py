"""The HTTP API and demo page: a FastAPI app around one loaded model (create_app), for uvicorn or any ASGI server.

    POST /v1/predict  {"texts": [...]} -> {"results": [rnnsent predict --json's object per text]}
    POST /v1/explain  {"texts": [...]} -> {"results": [rnnsent.explain's Explanation.to_json() per text]}
    GET  /v1/model    the model: cell, layers, parameters, vocabulary, labels, metrics, limits
    GET  /healthz     the process answers;   GET /readyz: the model is loaded and warmed up
    GET  /            the demo page;         GET /docs: the API as a plain page (GET /openapi.json: its schema)

Every error is {"error": "one line"} with a 4xx status (5xx only for the server's own faults). Requests are
read into memory within --max-body-bytes and answered from it; nothing a request sends is written to disk.
What is checked before a route runs (Host, Origin, the body) is in rnnsent.serve.guards; the request head and
the connections are bounded by `rnnsent serve`'s server (rnnsent.serve.server).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import html
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
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import HTMLResponse, Response
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ModuleNotFoundError as e:  # the `serve` extra is not installed
    raise ModuleNotFoundError(f"rnnsent serve needs FastAPI and uvicorn ({e.name} is missing): "
                              "pip install 'rnnsent[serve]'", name=e.name) from None

from rnnsent.config import ExplainConfig
from rnnsent.inference.evaluate import class_names
from rnnsent.serve.batcher import DynamicBatcher, TooLarge, Unavailable, WorkQueue
from rnnsent.serve.guards import AnswerCancelled, BodyLimit, HostCheck, SafeJSONResponse, error
from rnnsent.serve.settings import ServeSettings

log = logging.getLogger(__name__)
WARM_UP_TEXTS = ["A warm-up review, not answered to anyone.", ""]


class ApiError(Exception):
    """An answer other than 200: its status and the one line the client reads."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ---- request and response models (validation, and the OpenAPI page's schemas) ----

class TextsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(min_length=1, description="review texts (plain strings)",
                                   examples=[["A moving film.", "Dull."]])


class ExplainRequest(TextsRequest):
    target: StrictStr | None = Field(None, description="the class to attribute toward, by name [the second of two "
                                                      "(positive for IMDB), else the predicted one]")
    steps: StrictInt | None = Field(None, description="integration steps [the server's --explain-steps, also the "
                                                     "most a request may ask for]")


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
        "init_from": _started_from(loaded.provenance),  # where its training started (--init-from), or None
        # two classes: the positive class is answered where its probability is at least the threshold (None: argmax)
        "threshold": loaded.threshold, "positive_label": loaded.positive_label,
        "limits": {"max_body_bytes": settings.max_body_bytes, "max_texts": settings.max_texts,
                   "max_chars": settings.max_chars, "max_explain_texts": settings.max_explain_texts,
                   "max_queue": settings.max_queue, "explain_steps": settings.explain_steps,
                   "max_explain_work": settings.max_explain_work},
        "batching": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms},
    }


def _started_from(provenance: dict | None) -> dict | None:
    """--init-from's name (a released model's, or a path's last part: no path of the training machine) and the
    checksum of that checkpoint file."""
    if provenance is None:
        return None
    return {"init_from": Path(provenance["init_from"]).name, "sha256": provenance["sha256"]}


# ---- the app ----

def create_app(loaded, settings: ServeSettings | None = None, **overrides) -> FastAPI:
    """The ASGI app serving `loaded` (rnnsent.load_checkpoint's LoadedModel). settings (or keyword overrides of
    ServeSettings' fields: max_batch=, max_wait_ms=, ...) bound batching and requests; host and port are the
    server's business. Run it with uvicorn: `uvicorn.run(create_app(loaded))`, one worker per model copy."""
    settings = dataclasses.replace(settings or ServeSettings(), **overrides)
    batcher = DynamicBatcher(predict_work(loaded, settings.max_batch), settings.max_batch, settings.max_wait_ms,
                             settings.max_queue)
    served = _Served(loaded, settings, batcher, WorkQueue(batcher, settings.max_explain_work, "texts x steps"))
    app = FastAPI(title="rnnsent", summary="Sentiment (or your own classes) of texts with an rnnsent model",
                  lifespan=_lifespan(served), default_response_class=SafeJSONResponse, docs_url=None,
                  redoc_url=None)
    # The last added runs first: a request cancelled at shutdown, then who may call, then the body.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    if settings.cors_origins():
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins(), allow_methods=["GET", "POST"],
                           allow_headers=["content-type"])
    app.add_middleware(HostCheck, hosts=settings.host_names(), origins=settings.cors_origins())
    app.add_middleware(AnswerCancelled)
    app.state.batcher, app.state.settings, app.state.served = batcher, settings, served
    _add_error_handlers(app)
    _add_status_routes(app, served)
    _add_docs_page(app)
    _add_predict_route(app, served)
    _add_explain_route(app, served)
    return app


@dataclasses.dataclass
class _Served:
    """What the routes share: the model, the settings, its batcher, and what the app has found out since it started."""

    loaded: Any
    settings: ServeSettings
    batcher: DynamicBatcher
    explains: WorkQueue  # /v1/explain's work, in texts x steps
    ready: bool = False  # the warm-up forward has finished
    explain: bool | None = None  # explanations work (None: not known yet)
    stopping: bool = False  # the server is draining (SIGTERM): explanations stop at their next text

    def begin_drain(self) -> None:
        """The server has begun to shut down: explanations in flight are answered 503 after the text at hand."""
        self.stopping = True


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
            served.ready, served.stopping = False, True
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
        return {**info, "explain": served.explain, "batches": batcher.batches, "batched_texts": batcher.texts,
                "explained_texts": served.explains.chunks, "explain_work": served.explains.admitted}


def _add_docs_page(app: FastAPI) -> None:
    """GET /docs: the API as one plain page made from the OpenAPI schema, with nothing from elsewhere (FastAPI's
    Swagger page loads its script from a CDN: it fails offline, and runs a third party's script on this origin)."""
    pages: list[str] = []

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs():
        pages[:] = pages or [api_page(app.openapi())]
        return HTMLResponse(pages[0], headers={"Content-Security-Policy": "default-src 'none'; style-src "
                                                                          "'unsafe-inline'; img-src data:"})


def api_page(schema: dict) -> str:
    """The OpenAPI schema as HTML: each route's summary, description, request body and answers, every text escaped."""
    esc, parts = html.escape, []
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            answers = "".join(f"<li><b>{esc(str(code))}</b> {esc(r.get('description', ''))}</li>"
                              for code, r in op.get("responses", {}).items())
            parts.append(f'<section><h2><code>{esc(method.upper())} {esc(path)}</code></h2>'
                         f'<p>{esc(op.get("summary", ""))}</p><p>{esc(op.get("description", ""))}</p>'
                         + (f"<h3>Request body (JSON)</h3><pre>{esc(json.dumps(body, indent=2))}</pre>" if body else "")
                         + f"<h3>Answers</h3><ul>{answers}</ul></section>")
    schemas = schema.get("components", {}).get("schemas", {})
    title = f"{schema['info']['title']} {schema['info'].get('version', '')}".strip()
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
            f"<title>{esc(title)}: the API</title><style>"
            "body{font:15px/1.5 system-ui,sans-serif;max-width:60em;margin:1.5em auto;padding:0 1em;color:#111}"
            "pre{background:#f4f4f4;padding:.6em;overflow-x:auto;font-size:13px}section{border-top:1px solid #ddd}"
            f"</style></head><body><h1>{esc(title)}: the API</h1><p>{esc(schema['info'].get('summary', ''))}. "
            'The schema as JSON: <a href="/openapi.json">/openapi.json</a> (OpenAPI '
            f'{esc(schema.get("openapi", ""))}); the demo page: <a href="/">/</a>. Every error is '
            '<code>{"error": "one line"}</code>.</p>\n' + "\n".join(parts)
            + f"\n<section><h2>Schemas</h2><pre>{esc(json.dumps(schemas, indent=2))}</pre></section></body></html>\n")


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
        except TooLarge as e:
            raise ApiError(413, str(e)) from None
        except Unavailable as e:
            raise ApiError(503, str(e)) from None
        # A Response as it is: response_model documents the shape, and validating our own output again costs
        # more per request than parsing it did.
        return SafeJSONResponse({"results": [p.to_json(t) for t, p in zip(texts, predictions)]})


def _add_explain_route(app: FastAPI, served: _Served) -> None:
    """POST /v1/explain: integrated gradients on the model's thread, one text at a time between the batches, within
    --max-explain-work; stopped when the client goes away or the server drains. 501 without Captum."""
    settings = served.settings

    @app.post("/v1/explain", response_model=ExplainResponse, openapi_extra=_body_schema(ExplainRequest),
              responses={501: {"description": "rnnsent.explain or Captum is not installed"}})
    async def explain(request: Request):
        """Each word's attribution to the class (integrated gradients, rnnsent.explain), with the prediction."""
        req = parse_texts(await request.body(), ExplainRequest, settings.max_explain_texts, settings.max_chars)
        steps = explain_steps(req.steps, settings.explain_steps)
        if served.stopping:
            raise ApiError(503, SHUTTING_DOWN)
        try:
            with served.explains.admit(len(req.texts) * steps):
                results = await _unless_gone(request, _explain_each(served, req, steps))
        except TooLarge as e:
            raise ApiError(413, f"{e}: --max-explain-work; send fewer texts or steps") from None
        except Unavailable as e:
            raise ApiError(503, str(e)) from None
        except ApiError as e:
            if e.status == 501:
                served.explain = False
            raise
        if results is None:  # nobody is there to read an answer
            log.info("an explain request's client went away: its work stopped")
            return Response(status_code=499)
        served.explain = True
        return SafeJSONResponse({"results": results})


SHUTTING_DOWN = "the server is shutting down: explanations in progress stop; retry shortly"


def explain_steps(asked: int | None, most: int) -> int:
    """A request's integration steps: ExplainConfig's rule (the command's and explain()'s line), at most `most`
    (--explain-steps); None is `most`. ApiError 422 otherwise."""
    if asked is None:
        return most
    try:
        ExplainConfig(steps=asked)
    except ValueError as e:
        raise ApiError(422, str(e)) from None
    if asked > most:
        raise ApiError(422, f"steps must be at most {most} on this server (--explain-steps), got {asked}")
    return asked


async def _explain_each(served: _Served, req: ExplainRequest, steps: int) -> list[dict]:
    """explain(loaded, [text]) for each text in turn, each a chunk of the explain queue on the model's thread."""
    results = []
    for text in req.texts:
        if served.stopping:
            raise ApiError(503, SHUTTING_DOWN)
        results.append(await served.explains.run(_explain_one, served.loaded, text, req.target, steps))
    return results


def _explain_one(loaded, text: str, target: str | None, steps: int) -> dict:
    """One text's attributions, on the model's thread; ApiError 501 without Captum, 422 for an unknown target."""
    explain_fn = _import_explain()  # (importing Captum takes a while: not on the event loop)
    try:
        return explain_fn(loaded, [text], target=target, method="ig", steps=steps)[0].to_json()
    except ImportError as e:
        raise ApiError(501, f"explanations are not available: {str(e).splitlines()[0]}") from None
    except (ValueError, TypeError, KeyError) as e:  # a target the model does not have, and the like
        raise ApiError(422, str(e).splitlines()[0] if str(e) else type(e).__name__) from None


async def _unless_gone(request: Request, work) -> Any:
    """`await work`, unless the client goes away first: then the work is cancelled (it stops after the text on the
    model's thread) and the answer is None."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait([task, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait([task])  # its text on the model's thread finishes first
    return None if task.cancelled() else task.result()


async def _disconnected(receive) -> None:
    """Returns once the server says the client has gone (after the body, the next message is that)."""
    while (await receive())["type"] != "http.disconnect":
        pass
