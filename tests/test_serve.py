"""rnnsent serve: answers equal to rnnsent.predict's batched or not, bad requests as one-line 4xx answers, and a
real server process on loopback (slow and vanishing clients, SIGTERM's drain, nothing written to disk)."""
import asyncio
import json
import logging
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytest.importorskip("fastapi", reason="rnnsent serve needs the serve extra: pip install 'rnnsent[serve]'")
httpx = pytest.importorskip("httpx", reason="the in-process tests drive the app through httpx")

import torch  # noqa: E402
from test_cli import FIXTURE, ROOT  # noqa: E402

import rnnsent  # noqa: E402
from rnnsent import cli  # noqa: E402
from rnnsent.inference.loading import load_checkpoint  # noqa: E402
from rnnsent.storage.checkpoint import save_checkpoint  # noqa: E402
from rnnsent.data import Vocab  # noqa: E402
from rnnsent.model.sentiment import SentimentRNN  # noqa: E402
from rnnsent.serve import ServeSettings, create_app  # noqa: E402
from rnnsent.serve.process import ServerProcess, environment  # noqa: E402

REVIEWS = [r["t"] for r in json.loads(FIXTURE.read_text())]
ODD = ["", "zzqx vvqy", "Ünïcödé — 映画 は 良い!", "<script>alert(1)</script> great", "\ud800 lone surrogate",
       "word " * 3000, "Dull.", "A moving film."]
TEXTS = REVIEWS + ODD
CLASSES = ["admin", "perl", "python", "science"]


@pytest.fixture(scope="module")
def released():
    return load_checkpoint("gru")


@pytest.fixture(scope="module")
def four_classes(tmp_path_factory):
    """A small four-class GRU of random weights (softmax output), saved and loaded as a checkpoint is."""
    torch.manual_seed(0)
    vocab = Vocab(tuple("the a film good bad great dull moving plot acting cast story boring fine awful".split()))
    model = SentimentRNN("gru", vocab_size=len(vocab), embed_dim=8, hidden_size=6, num_classes=len(CLASSES))
    with torch.no_grad():
        model.fc.weight.mul_(8)  # away from uniform answers, so that the labels are telling
    state = {"model_config": model.config(), "model_state": model.state_dict(), "vocab": vocab.to_dict(),
             "data": {"max_len": 40, "encoding": "keras", "classes": CLASSES}}
    return load_checkpoint(save_checkpoint(tmp_path_factory.mktemp("four") / "best.pt", state))


def serve_in_process(app, scenario):
    """Run `await scenario(client)` against the app (lifespan included) with an in-process HTTP client."""
    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=60) as client:
                for _ in range(600):  # the warm-up forward: at most 60 s
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise TimeoutError("the app did not get ready")
                return await scenario(client)

    return asyncio.run(main())


def post_json(client, path: str, obj):
    """client.post with the body in JSON's ASCII form (httpx's json= cannot send a lone surrogate)."""
    return client.post(path, content=json.dumps(obj).encode(), headers={"content-type": "application/json"})


def assert_same_answers(got: list[dict], texts: list[str], expected: list):
    """Each answer is rnnsent predict's for its text: the same keys and values, probabilities to float rounding
    (a text's forward may share a batch of another shape, and BLAS sums in another order)."""
    assert len(got) == len(texts)
    for g, text, p in zip(got, texts, expected):
        want = json.loads(json.dumps(p.to_json(text)))
        assert g.keys() == want.keys()
        for key in ("label", "text", "words", "oov_share", "note"):
            assert g[key] == want[key], (key, text[:40])
        assert g["probability"] == pytest.approx(want["probability"], abs=1e-6)
        assert g["probabilities"].keys() == want["probabilities"].keys()
        for name, value in want["probabilities"].items():
            assert g["probabilities"][name] == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("which", ["released", "four_classes"])
def test_concurrent_requests_are_batched_and_answered_as_predict_does(which, request, monkeypatch):
    loaded = request.getfixturevalue(which)
    threads = set()
    original = loaded.predict

    def recording(texts, batch_size=256, groups=None):
        threads.add(threading.current_thread().name)
        return original(texts, batch_size=batch_size, groups=groups)

    monkeypatch.setattr(loaded, "predict", recording)
    sizes = [1, 3, 2, 5, 1, 4, 2, 1, 6, 3]
    groups, start = [], 0
    for i in range(3 * len(sizes)):  # 30 requests of 1 to 6 texts, every text several times over
        n = sizes[i % len(sizes)]
        groups.append([TEXTS[(start + j) % len(TEXTS)] for j in range(n)])
        start += n
    app = create_app(loaded, max_batch=16, max_wait_ms=50)

    async def scenario(client):
        replies = await asyncio.gather(*(post_json(client, "/v1/predict", {"texts": g}) for g in groups))
        return [r.status_code for r in replies], [r.json() for r in replies]

    statuses, bodies = serve_in_process(app, scenario)
    assert statuses == [200] * len(groups)
    for group, body in zip(groups, bodies):
        assert_same_answers(body["results"], group, rnnsent.predict(loaded, group))  # as one call
        assert_same_answers(body["results"], group, [rnnsent.predict(loaded, [t])[0] for t in group])  # one by one
    batcher = app.state.batcher
    texts = sum(map(len, groups))
    assert batcher.texts == texts + 2  # (the 2 warm-up texts)
    assert batcher.batches < len(groups) / 2, "concurrent requests should share forwards"
    assert threads == {"rnnsent-model_0"}, "all model work on the one worker thread, never on the event loop"
    if which == "four_classes":
        labels = {r["label"] for body in bodies for r in body["results"]}
        assert len(labels) > 1 and labels <= set(CLASSES)


def test_max_batch_1_runs_one_forward_per_text(four_classes, monkeypatch):
    calls = []
    original = four_classes.predict

    def recording(texts, batch_size=256, groups=None):
        def counted(steps):  # the forwards predict runs for these texts
            cut = groups(steps)
            calls.extend((len(texts), len(g)) for g in cut)
            return cut

        return original(texts, batch_size=batch_size, groups=counted)

    monkeypatch.setattr(four_classes, "predict", recording)
    app = create_app(four_classes, max_batch=1, max_wait_ms=20)
    groups = [[t] for t in TEXTS[:10]]

    async def scenario(client):
        return await asyncio.gather(*(post_json(client, "/v1/predict", {"texts": g}) for g in groups))

    replies = serve_in_process(app, scenario)
    for group, reply in zip(groups, replies):
        assert_same_answers(reply.json()["results"], group, rnnsent.predict(four_classes, group))
    assert {size for _, size in calls} == {1}, "forwards of one text each"
    assert app.state.batcher.batches == len(groups) + 1  # + the warm-up's batch, of two texts: two forwards
    assert [n for n, _ in calls] == [2, 2] + [1] * len(groups)


def test_predict_keys_are_those_of_rnnsent_predict_json(released, capsys):
    texts = ["A moving film.", "Dull, dull, dull."]
    assert cli.predict_main(["--checkpoint", "gru", "--json", *texts]) == 0
    from_cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    async def scenario(client):
        return (await post_json(client, "/v1/predict", {"texts": texts})).json()["results"]

    got = serve_in_process(create_app(released), scenario)
    assert [list(g) for g in got] == [list(c) for c in from_cli]
    for g, c in zip(got, from_cli):
        assert g["label"] == c["label"] and g["probability"] == pytest.approx(c["probability"], abs=1e-6)


def test_model_health_and_page(released):
    async def scenario(client):
        return {path: await client.get(path)
                for path in ("/v1/model", "/healthz", "/readyz", "/", "/openapi.json", "/docs", "/redoc")}

    r = serve_in_process(create_app(released), scenario)
    info = r["/v1/model"].json()
    expected = json.loads((rnnsent.inference.loading.RELEASED / "RESULTS.json").read_text())["gru"]
    assert info["cell"] == "gru" and info["layers"] == 1 and info["labels"] == ["negative", "positive"]
    assert info["parameters"] == rnnsent.count_parameters(released.model) and info["vocab_size"] == 5000
    assert info["released"]["test_accuracy"] == expected["test_accuracy"]
    assert info["metrics"]["val_accuracy"] == released.metrics["val_accuracy"]
    assert "/" not in info["checkpoint"], "no path of the server's machine"
    assert r["/healthz"].json() == {"status": "ok"} and r["/readyz"].status_code == 200
    page = r["/"].text
    assert r["/"].headers["content-type"].startswith("text/html") and 'id="review"' in page
    assert "http://" not in page and "https://" not in page, "the page must load nothing from elsewhere"
    assert "innerHTML" not in page, "the page shows text through textContent only"
    assert {"/v1/predict", "/v1/explain", "/v1/model"} <= set(r["/openapi.json"].json()["paths"])
    docs = r["/docs"].text  # the API as a plain page: no script, nothing from elsewhere (no CDN's Swagger)
    assert r["/docs"].status_code == 200 and "<script" not in docs and "http://" not in docs and "https://" not in docs
    assert all(f"<code>POST {p}</code>" in docs for p in ("/v1/predict", "/v1/explain")) and "/openapi.json" in docs
    assert "default-src 'none'" in r["/docs"].headers["content-security-policy"]
    assert_one_line_error(r["/redoc"], 404)  # (FastAPI's ReDoc page loads from a CDN too)


def test_readiness_waits_for_the_warm_up_and_a_full_queue_is_503(four_classes, monkeypatch):
    gate = threading.Event()
    original = four_classes.predict

    def held(texts, batch_size=256, groups=None):
        assert gate.wait(30)
        return original(texts, batch_size=batch_size, groups=groups)

    monkeypatch.setattr(four_classes, "predict", held)
    app = create_app(four_classes, max_queue=4, max_wait_ms=0)

    async def main():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                                         timeout=60) as c:
                before = [(await c.get(p)).status_code for p in ("/readyz", "/healthz")]
                waiting = [asyncio.create_task(post_json(c, "/v1/predict", {"texts": ["good"] * 2})) for _ in range(2)]
                await asyncio.sleep(0.2)  # both queued behind the held warm-up: 4 texts waiting
                full = await post_json(c, "/v1/predict", {"texts": ["good"]})
                gate.set()
                answered = [(await w).status_code for w in waiting]
                for _ in range(100):
                    if (await c.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                return before, full, answered, (await c.get("/readyz")).status_code

    before, full, answered, after = asyncio.run(main())
    assert before == [503, 200]
    assert full.status_code == 503 and "busy" in full.json()["error"]
    assert answered == [200, 200] and after == 200


def test_length_buckets_are_the_cheapest_cuts():
    import itertools

    from rnnsent.serve.app import STEP_ROWS, length_buckets

    def cost(groups, lengths):
        return sum(max(lengths[i] for i in g) * (STEP_ROWS + len(g)) for g in groups)

    rng = __import__("random").Random(0)
    for _ in range(40):
        lengths = [rng.choice([3, 5, 40, 41, 300, 900]) + rng.randrange(3) for _ in range(rng.randint(1, 8))]
        max_batch = rng.randint(1, 5)
        groups = length_buckets(lengths, max_batch)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths))) and all(
            len(g) <= max_batch for g in groups
        )
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        cheapest = min(  # every way to cut the sorted order into runs of at most max_batch
            cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))], lengths)
            for k in range(len(order)) for cuts in itertools.combinations(range(1, len(order)), k)
            if all(b - a <= max_batch for a, b in zip((0, *cuts), (*cuts, len(order)))))
        assert cost(groups, lengths) == cheapest, (lengths, max_batch, groups)


# ---- bad requests: every one a 4xx with {"error": one line} ----

BAD = {  # what is wrong -> (body, the status)
    "malformed JSON": (b'{"texts": ["a"', 400),
    "a form, not JSON": (b"texts=hello", 400),
    "an empty body": (b"", 400),
    "invalid UTF-8": (b'{"texts": ["\xff\xfe\xfd"]}', 400),
    "JSON nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, 400),
    "an integer of 5,000 digits": (b'{"texts": [' + b"9" * 5000 + b"]}", 400),
    "NaN for the texts": (b'{"texts": NaN}', 422),
    "a list, not an object": (b'["a film"]', 422),
    "a string, not an object": (b'"a film"', 422),
    "no texts field": (b"{}", 422),
    "texts a string": (b'{"texts": "a film"}', 422),
    "texts an object": (b'{"texts": {"a": "film"}}', 422),
    "a number among the texts": (b'{"texts": ["ok", 5]}', 422),
    "a null text": (b'{"texts": [null]}', 422),
    "a nested list": (b'{"texts": [["a film"]]}', 422),
    "an empty list": (b'{"texts": []}', 422),
    "an unknown field": (b'{"texts": ["a"], "mode": "fast"}', 422),
    "too many texts": (json.dumps({"texts": ["a"] * 5}).encode(), 413),
    "a text over the bound": (json.dumps({"texts": ["ok", "x" * 101]}).encode(), 413),
    "a body over the bound": (json.dumps({"texts": ["a " * 150_001]}).encode(), 413),
}


def assert_one_line_error(reply, status):
    assert reply.status_code == status, (reply.status_code, reply.text[:300])
    body = reply.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    assert "\n" not in body["error"] and "Traceback" not in body["error"] and len(body["error"]) < 300, body


def test_bad_requests_get_one_line_4xx_answers(four_classes):
    app = create_app(four_classes, max_texts=4, max_chars=100, max_explain_texts=4, max_body_bytes=300_000)

    async def scenario(client):
        out = {}
        for path in ("/v1/predict", "/v1/explain"):
            for what, (body, _) in BAD.items():
                out[path, what] = await client.post(path, content=body, headers={"content-type": "application/json"})
        out["get predict"] = await client.get("/v1/predict")
        out["unknown path"] = await client.get("/v2/predict")
        out["explain: a bool target"] = await post_json(client, "/v1/explain", {"texts": ["a"], "target": True})
        out["after all that"] = await post_json(client, "/v1/predict", {"texts": ["good film"]})
        return out

    replies = serve_in_process(app, scenario)
    for (path, what), (_, status) in ((k, BAD[k[1]]) for k in replies if isinstance(k, tuple)):
        assert_one_line_error(replies[path, what], status)
    assert_one_line_error(replies["get predict"], 405)
    assert_one_line_error(replies["unknown path"], 404)
    assert_one_line_error(replies["explain: a bool target"], 422)
    assert replies["after all that"].status_code == 200


def test_explain_answers_501_in_one_line_without_rnnsent_explain(four_classes, monkeypatch):
    monkeypatch.setitem(sys.modules, "rnnsent.inference.explain", None)  # `import rnnsent.inference.explain` now fails

    async def scenario(client):
        return await post_json(client, "/v1/explain", {"texts": ["a good film"]}), (
            await client.get("/v1/model")
        ).json()

    reply, _ = serve_in_process(create_app(four_classes), scenario)
    assert_one_line_error(reply, 501)


def test_explain_answers_what_explain_does_for_each_text(released):
    from rnnsent.inference.explain import explain

    pytest.importorskip("captum", reason="explanations need Captum")
    texts = ["A moving film with a wonderful cast.", "Dull and far too long."]
    settings = ServeSettings(explain_steps=8)

    async def scenario(client):
        return (await post_json(client, "/v1/explain", {"texts": texts}),
                await post_json(client, "/v1/explain", {"texts": texts[:1], "steps": 5}),
                (await client.get("/v1/model")).json())

    reply, fewer_steps, info = serve_in_process(create_app(released, settings), scenario)
    assert reply.status_code == 200, reply.text
    # Each text is attributed on its own (a chunk of the model thread's time): explain() of that one text.
    expected = [explain(released, [t], target=None, method="ig", steps=settings.explain_steps)[0].to_json()
                for t in texts]
    assert reply.json()["results"] == json.loads(json.dumps(expected))
    assert fewer_steps.json()["results"] == json.loads(json.dumps([explain(released, texts[:1], steps=5)[0].to_json()]))
    assert info["explain"] is True and info["explained_texts"] == 3 and info["explain_work"] == 0


# ---- bounded work: a request larger than the queue, explanations in their own queue ----

def test_a_request_larger_than_the_queue_is_413_not_busy(four_classes):
    app = create_app(four_classes, max_queue=10, max_explain_texts=8, explain_steps=4, max_explain_work=12)

    async def scenario(client):
        return (await post_json(client, "/v1/predict", {"texts": ["good"] * 11}),
                await post_json(client, "/v1/predict", {"texts": ["good"] * 10}),
                await post_json(client, "/v1/explain", {"texts": ["good"] * 4}))

    too_many, fits, too_much_work = serve_in_process(app, scenario)
    assert_one_line_error(too_many, 413)
    assert "11 texts, more than the queue" in too_many.json()["error"] and "--max-queue" in too_many.json()["error"]
    assert fits.status_code == 200
    assert_one_line_error(too_much_work, 413)  # 4 texts x 4 steps = 16 > 12
    assert "--max-explain-work" in too_much_work.json()["error"]


class SlowExplanation:
    """What rnnsent.inference.explain.explain returns, for a stand-in that takes CHUNK_S per text."""

    def __init__(self, text):
        self.text = text

    def to_json(self):
        return {"text": self.text}


CHUNK_S = 0.25


def slow_explain(loaded, texts, **kwargs):
    time.sleep(CHUNK_S * len(texts))  # (a sleep: the test's timing needs no free core)
    return [SlowExplanation(t) for t in texts]


def test_explanations_have_their_own_bounded_queue_and_predict_waits_at_most_a_text(four_classes, monkeypatch):
    import rnnsent.inference.explain

    monkeypatch.setattr(rnnsent.inference.explain, "explain", slow_explain)
    # Two requests of 8 texts at 2 steps fill the explain queue (32); each text is one chunk of the model thread.
    app = create_app(four_classes, max_explain_texts=8, explain_steps=2, max_explain_work=32)
    texts = [f"text {i}" for i in range(8)]

    async def scenario(client):
        explains = [asyncio.create_task(post_json(client, "/v1/explain", {"texts": texts})) for _ in range(2)]
        await asyncio.sleep(0.3)  # both admitted, the first texts running
        busy = await post_json(client, "/v1/explain", {"texts": texts[:1]})
        waits = []
        for _ in range(5):  # 16 texts x 0.25 s of explaining: 4 s; each predict waits for one text at most
            start = time.perf_counter()
            answer = await post_json(client, "/v1/predict", {"texts": ["good film"]})
            waits.append((answer.status_code, time.perf_counter() - start))
            await asyncio.sleep(0.1)
        return busy, waits, [await e for e in explains], (await client.get("/v1/model")).json()

    busy, waits, explained, info = serve_in_process(app, scenario)
    assert_one_line_error(busy, 503)
    assert "busy" in busy.json()["error"]
    assert [status for status, _ in waits] == [200] * 5
    assert max(w for _, w in waits) < 3 * CHUNK_S, waits
    assert [r.json()["results"] for r in explained] == [[{"text": t} for t in texts]] * 2
    assert info["explained_texts"] == 16 and info["explain_work"] == 0


def test_steps_have_one_rule_and_one_line_at_every_door(four_classes, monkeypatch, capsys):
    import rnnsent.inference.explain

    def no_work(*args, **kwargs):
        raise AssertionError("the steps are checked before any work")

    monkeypatch.setattr(rnnsent.inference.explain, "predict", no_work)
    for steps in (0, 1, 1001, 100_000):
        says = f"steps must be at least 2 and at most 1,000, got {steps}"
        with pytest.raises(ValueError) as e:  # the Python API
            rnnsent.explain(four_classes, ["a good film"], steps=steps)
        assert str(e.value) == says
        with pytest.raises(SystemExit) as e:  # the command, before it loads anything
            cli.explain_main(["--checkpoint", "no/such/model.pt", "--steps", str(steps), "a good film"])
        assert e.value.code == 2 and capsys.readouterr().err.strip().endswith(f"argument --steps: {says} (see --help)")
        assert cli.serve_main(["--checkpoint", "no/such/model.pt", "--explain-steps", str(steps)]) == 2  # the server
        assert capsys.readouterr().err.strip() == f"error: --explain-{says}"
        reply = serve_in_process(  # and a request's own steps
            create_app(four_classes), lambda c: post_json(c, "/v1/explain", {"texts": ["good"], "steps": steps}))
        assert_one_line_error(reply, 422)
        assert reply.json()["error"] == says
    reply = serve_in_process(create_app(four_classes, explain_steps=20),
                             lambda c: post_json(c, "/v1/explain", {"texts": ["good"], "steps": 21}))
    assert_one_line_error(reply, 422)
    assert reply.json()["error"] == "steps must be at most 20 on this server (--explain-steps), got 21"


def test_a_request_cancelled_at_shutdown_is_answered_503_in_json():
    from rnnsent.serve.guards import AnswerCancelled

    sent, started = [], asyncio.Event()

    async def held(scope, receive, send):  # a request the drain's end catches in the middle
        started.set()
        await asyncio.sleep(60)

    async def send(message):
        sent.append(message)

    async def main():
        scope = {"type": "http", "method": "POST", "path": "/v1/explain", "headers": []}
        task = asyncio.create_task(AnswerCancelled(held)(scope, None, send))
        await started.wait()
        task.cancel()  # what uvicorn does once --drain-s is up
        await task

    asyncio.run(main())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 503
    assert json.loads(sent[1]["body"]) == {"error": "the server is shutting down; retry shortly"}


# ---- who may call: the Host header (DNS rebinding) and other origins' pages (CORS) ----

def test_host_and_origin_are_checked_and_cors_is_only_what_is_asked(four_classes):
    plain = create_app(four_classes)
    widened = create_app(four_classes, allowed_hosts="127.0.0.1,evil.example,*.lan", cors_origin="https://app.example")
    body = json.dumps({"texts": ["a good film"]}).encode()

    async def asks(client):
        out = {}
        for what, headers in {
            "rebound": {"host": "evil.example", "origin": "http://evil.example", "content-type": "text/plain"},
            "no origin, another host": {"host": "evil.example:8000"},
            "a page elsewhere": {"origin": "http://evil.example", "content-type": "text/plain"},
            "its own page": {"origin": "http://127.0.0.1", "content-type": "text/plain"},
            "a page of a CORS origin": {"origin": "https://app.example"},
            "localhost": {"host": "localhost:8000"},
            "a name under a wildcard": {"host": "box.lan"},
        }.items():
            out[what] = await client.post("/v1/predict", content=body, headers=headers)
        out["preflight"] = await client.options("/v1/predict", headers={
            "origin": "https://app.example", "access-control-request-method": "POST"})
        return out

    got = serve_in_process(plain, asks)
    assert_one_line_error(got["rebound"], 400)
    assert "evil.example" in got["rebound"].json()["error"] and "--allowed-hosts" in got["rebound"].json()["error"]
    assert_one_line_error(got["no origin, another host"], 400)
    assert_one_line_error(got["a page elsewhere"], 403)
    assert "--cors-origin" in got["a page elsewhere"].json()["error"]
    assert_one_line_error(got["a page of a CORS origin"], 403)
    assert_one_line_error(got["a name under a wildcard"], 400)
    assert got["its own page"].status_code == 200 and got["localhost"].status_code == 200
    assert "access-control-allow-origin" not in got["preflight"].headers, "no CORS unless asked"

    got = serve_in_process(widened, asks)
    for what in ("rebound", "no origin, another host", "its own page", "a name under a wildcard"):
        assert got[what].status_code == 200, what
    assert got["a page of a CORS origin"].status_code == 200
    assert got["a page of a CORS origin"].headers["access-control-allow-origin"] == "https://app.example"
    assert got["preflight"].headers["access-control-allow-origin"] == "https://app.example"
    assert_one_line_error(got["a page elsewhere"], 403)
    assert_one_line_error(got["localhost"], 400), "--allowed-hosts replaces the default names"


def test_the_default_host_names_are_the_bound_address():
    assert ServeSettings().host_names() == ["127.0.0.1", "::1", "localhost"]
    assert ServeSettings(host="localhost").host_names() == ["127.0.0.1", "::1", "localhost"]
    assert ServeSettings(host="192.168.1.5").host_names() == ["192.168.1.5"]
    assert ServeSettings(host="0.0.0.0").host_names() == ["*"]
    assert ServeSettings(host="0.0.0.0", allowed_hosts="Api.Example, *.lan").host_names() == ["api.example", "*.lan"]


# ---- a real server process on loopback ----

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("served")
    (base / "cwd").mkdir()
    (base / "cache").mkdir()
    env = environment(RNNSENT_CACHE=str(base / "cache"), OMP_NUM_THREADS="1")
    with ServerProcess("gru", "--max-wait-ms", "5", "--body-timeout-s", "3", "--max-body-bytes", "10000",
                       "--header-timeout-s", "2", "--limit-concurrency", "40", cwd=base / "cwd", env=env,
                       log=base / "server.log") as s:
        s.base = base
        yield s


def raw_request(url: str, data: bytes, timeout: float = 30.0) -> bytes:
    """Send `data` as it is (a request line, headers and body) and return all the server answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def post(url: str, body: bytes, content_type="application/json", timeout=30.0):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_curl_style_form_body_is_read_as_json(server, released):
    # `curl -d '{...}'` sends application/x-www-form-urlencoded: the body is JSON all the same
    status, body = post(server.url + "/v1/predict", b'{"texts": ["A moving film.", "Dull."]}',
                        content_type="application/x-www-form-urlencoded")
    assert status == 200
    assert_same_answers(
        body["results"], ["A moving film.", "Dull."], rnnsent.predict(released, ["A moving film.", "Dull."])
    )


def test_raw_http_bad_requests(server):
    head = "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n"
    chunk = b"9c40\r\n" + b"x" * 40000 + b"\r\n"  # chunked: 40,000 bytes, no Content-Length to refuse it by
    cases = {
        "declared over the bound": ((head + "Content-Length: 20000\r\n\r\n").encode() + b"{" * 20000, 413),
        "chunked over the bound": ((head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunk + b"0\r\n\r\n", 413),
        "a Content-Length that is no number": ((head + "Content-Length: ten\r\n\r\n").encode(), 400),
    }
    for what, (data, status) in cases.items():
        answer = raw_request(server.url, data)
        assert answer.startswith(f"HTTP/1.1 {status}".encode()), (what, answer[:200])
        assert b"Traceback" not in answer


def test_slow_and_vanishing_clients_do_not_stall_others(server):
    host, port = server.host, server.port
    slow = socket.create_connection((host, port), timeout=30)
    slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"texts\": [")  # ... and then nothing
    started = time.monotonic()
    body = b'{"texts": ["a film"]}'
    for _ in range(20):  # clients that send a request and leave at once
        with socket.create_connection((host, port), timeout=10) as gone:
            gone.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
    status, body = post(server.url + "/v1/predict", b'{"texts": ["A fine film."]}')
    assert status == 200 and body["results"][0]["label"] in ("positive", "negative")
    waited = time.monotonic() - started
    assert select.select([slow], [], [], 0)[0] == [] or waited > 3, "answered while the slow client holds its request"
    slow.settimeout(10)
    answer = slow.recv(4096)  # the body timeout (3 s here) answers the slow client and frees its request
    slow.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    with urllib.request.urlopen(server.url + "/healthz", timeout=10) as r:
        assert r.status == 200


def test_requests_write_nothing_to_disk(server):
    for body in (b'{"texts": ["A good film."]}', b'{"texts": [1]}', b"not json",
                 b'{"texts": ["' + b"y" * 20000 + b'"]}'):
        post(server.url + "/v1/predict", body)
        post(server.url + "/v1/explain", body)
    assert list((server.base / "cwd").iterdir()) == [] and list((server.base / "cache").iterdir()) == []


def json_answer(answer: bytes, status: int) -> dict:
    """The body of a raw HTTP answer that must have `status` and be {"error": one line}."""
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:300]
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"content-type: application/json" in head.lower(), head
    error = json.loads(body)["error"]
    assert "\n" not in error and "Traceback" not in error
    return error


def read_until_closed(sock: socket.socket, seconds: float) -> bytes:
    """What the server sends until it closes the connection, within `seconds`."""
    sock.settimeout(seconds)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, socket.timeout):
        pass
    return b"".join(chunks)


def test_request_heads_are_bounded_in_bytes_lines_and_time(server):
    host = b"Host: 127.0.0.1:%d\r\n" % server.port
    big = raw_request(server.url, b"GET /healthz HTTP/1.1\r\n" + host + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    assert "--max-header-bytes" in json_answer(big, 431)
    many = raw_request(server.url, b"GET /healthz HTTP/1.1\r\n" + host + b"X-A: 1\r\n" * 101 + b"\r\n")
    assert "--max-headers" in json_answer(many, 431)
    assert "not valid HTTP" in json_answer(raw_request(server.url, b"GARBAGE\x00 /\r\n\r\n"), 400)

    # A header that never ends, sent 64 KiB at a time: the server stops reading it at the bound (it answers, or
    # resets the connection) rather than read on (a 200 MB header was read whole, slowing every other request).
    pieces, started = 0, time.monotonic()
    with socket.create_connection((server.host, server.port), timeout=10) as endless:
        endless.sendall(b"GET /healthz HTTP/1.1\r\n" + host + b"X-Endless: ")
        while pieces < 32 and not select.select([endless], [], [], 0.5)[0]:  # at most 2 MiB
            try:
                endless.sendall(b"a" * 65536)
            except OSError:  # reset: the server has refused it
                break
            pieces += 1
        answer = read_until_closed(endless, 10)
    assert pieces <= 3, f"the server read on to {pieces * 64} KiB of one header"
    assert answer == b"" or "--max-header-bytes" in json_answer(answer, 431)
    with urllib.request.urlopen(server.url + "/healthz", timeout=10) as r:
        assert r.status == 200 and time.monotonic() - started < 10

    # Half a head, and nothing at all: both closed with a 408 after --header-timeout-s (2 s here).
    half, silent = (socket.create_connection((server.host, server.port), timeout=10) for _ in range(2))
    half.sendall(b"GET /healthz HTTP/1.1\r\n" + host + b"X-Slow: ")
    started = time.monotonic()
    answers = [read_until_closed(c, 15) for c in (half, silent)]
    waited = time.monotonic() - started
    half.close(), silent.close()
    for answer in answers:
        assert "--header-timeout-s" in json_answer(answer, 408)
    assert 1 < waited < 12


def test_connections_beyond_the_limit_are_answered_503_and_closed(server):
    conns = [socket.create_connection((server.host, server.port), timeout=10) for _ in range(45)]  # the limit: 40
    try:
        time.sleep(1)  # (the idle ones get their 408 only after 2 s)
        readable = select.select(conns, [], [], 0)[0]
        refused = [read_until_closed(c, 5) for c in readable]
    finally:
        for c in conns:
            c.close()
    assert [conns.index(c) for c in readable] == list(range(40, 45)), [conns.index(c) for c in readable]
    for answer in refused:
        assert "--limit-concurrency" in json_answer(answer, 503)
    for _ in range(50):  # the closed ones leave the server's count as it reads their end
        status, _ = post(server.url + "/v1/predict", b'{"texts": ["A fine film."]}')
        if status == 200:
            break
        time.sleep(0.1)
    assert status == 200


def test_a_rebinding_page_cannot_drive_the_server(server):
    body = b'{"texts": ["a film"]}'
    answer = raw_request(server.url, b"POST /v1/predict HTTP/1.1\r\nHost: evil.example\r\nOrigin: http://evil.example\r\n"
                         b"Content-Type: text/plain\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
    assert "evil.example" in json_answer(answer, 400)


LONG_REVIEWS = sorted(REVIEWS, key=len)[-8:]


def send_explain(port: int, texts: list[str]) -> socket.socket:
    body = json.dumps({"texts": texts}).encode()
    c = socket.create_connection(("127.0.0.1", port), timeout=60)
    c.sendall(b"POST /v1/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
              % (len(body), body))
    return c


def model_info_of(url: str) -> dict:
    with urllib.request.urlopen(url + "/v1/model", timeout=30) as r:
        return json.loads(r.read())


def test_explanations_stop_when_their_client_goes_and_when_the_server_stops(tmp_path):
    pytest.importorskip("captum", reason="explanations need Captum")
    env = environment(OMP_NUM_THREADS="1")
    with ServerProcess("gru", "--drain-s", "5", cwd=tmp_path, env=env, log=tmp_path / "server.log") as s:
        gone = [send_explain(s.port, LONG_REVIEWS) for _ in range(4)]  # 4 x 8 long texts: the whole explain queue
        for _ in range(100):
            if model_info_of(s.url)["explain_work"] == 4 * 8 * 50:
                break
            time.sleep(0.05)
        for c in gone:  # the clients leave before any answer
            c.close()
        started = time.monotonic()
        status, _ = post(s.url + "/v1/predict", b'{"texts": ["A fine film."]}')
        answered_in = time.monotonic() - started
        for _ in range(200):  # the work stops within one text each
            after_gone = model_info_of(s.url)
            if after_gone["explain_work"] == 0:
                break
            time.sleep(0.05)

        # SIGTERM with explanations under way: each is answered 503 after the text at hand, in the JSON shape.
        conns = [send_explain(s.port, LONG_REVIEWS) for _ in range(3)]
        for _ in range(200):
            if model_info_of(s.url)["explained_texts"] > after_gone["explained_texts"]:
                break
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        answers = [read_until_closed(c, 30) for c in conns]
        for c in conns:
            c.close()
        code = s.stop()
    log = (tmp_path / "server.log").read_text()
    assert status == 200 and answered_in < 10, answered_in
    assert after_gone["explain_work"] == 0, after_gone
    assert after_gone["explained_texts"] <= 4, f"{after_gone['explained_texts']} of 32 texts explained for nobody"
    assert "client went away" in log
    assert code == 0, log[-2000:]
    for answer in answers:
        assert "shutting down" in json_answer(answer, 503)
    assert "Traceback" not in log and "Exception" not in log, log[-3000:]


def test_sigterm_answers_in_flight_requests_then_exits_0(tmp_path, released):
    texts = REVIEWS[:8]
    body = json.dumps({"texts": texts}).encode()
    env = environment(OMP_NUM_THREADS="1")
    with ServerProcess("gru", cwd=tmp_path, env=env, log=tmp_path / "server.log") as s:
        # In flight for sure: half the body is in when SIGTERM comes, the rest after it.
        with socket.create_connection((s.host, s.port), timeout=60) as c:
            c.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:len(body) // 2]))
            time.sleep(0.5)
            s.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            refused = s.proc.poll() is None and not _connects(s.host, s.port)
            c.sendall(body[len(body) // 2:])
            chunks = []
            while chunk := c.recv(65536):
                chunks.append(chunk)
        code = s.stop()
    log = (tmp_path / "server.log").read_text()
    answer = b"".join(chunks)
    assert code == 0, log[-2000:]
    assert answer.startswith(b"HTTP/1.1 200"), (answer[:300], log[-2000:])
    got = json.loads(answer.split(b"\r\n\r\n", 1)[1])["results"]
    assert_same_answers(got, texts, rnnsent.predict(released, texts))
    assert refused, "no new connections while draining"
    assert log.index("Shutting down") < log.index("Finished server process")


def _connects(host, port) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


# ---- the command line (in this process: its errors are the same lines) ----

def test_serve_without_fastapi_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` now fails, as where it is not installed
    monkeypatch.delitem(sys.modules, "rnnsent.serve.app")
    assert cli.serve_main(["--checkpoint", "gru"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: rnnsent serve needs FastAPI and uvicorn (fastapi is missing): pip install 'rnnsent[serve]'"]


@pytest.mark.parametrize("args, says", [
    (["--checkpoint", "gru", "--max-batch", "0"], "--max-batch must be at least 1, got 0"),
    (["--checkpoint", "gru", "--max-wait-ms", "nan"], "--max-wait-ms must be in [0.0, 10000.0], got nan"),
    (["--checkpoint", "gru", "--port", "http"], "argument --port: expected a whole number, got 'http'"),
    (["--checkpoint", "no/such/model.pt"], "checkpoint no/such/model.pt does not exist"),
])
def test_serve_flag_errors_are_one_line(args, says, capsys):
    try:
        code = cli.serve_main(args)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0], err


def test_serve_on_a_taken_port_fails_in_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        handler = signal.getsignal(signal.SIGTERM)
        code = cli.serve_main(["--checkpoint", "gru", "--port", str(taken.getsockname()[1])])
    assert code == 1 and signal.getsignal(signal.SIGTERM) is handler, "the signal handlers are put back"
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: could not listen on 127.0.0.1:") and "Traceback" not in "\n".join(err)


def test_serve_leaves_the_processs_own_log_handlers_open(capsys):
    # uvicorn's default log set-up (dictConfig) closes every handler the process has; a handler that closes its
    # stream then broke its owner's output (here: the test runner's, once TensorFlow's absl handler was loaded).
    closed = []

    class Probe(logging.Handler):
        def emit(self, record):
            pass

        def close(self):
            closed.append(True)
            super().close()

    probe = Probe()
    logging.getLogger("someone.elses").addHandler(probe)
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            assert cli.serve_main(["--checkpoint", "gru", "--port", str(taken.getsockname()[1])]) == 1
    finally:
        logging.getLogger("someone.elses").removeHandler(probe)
    assert not closed
    assert "error while attempting to bind" in capsys.readouterr().err  # uvicorn's own line still shows


@pytest.mark.slow  # two server processes and a few hundred requests: a minute on a busy 2-core machine
def test_bench_serve_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench_serve.py"), "--fixture", "--requests", "40",
         "--seconds", "5", "--concurrency", "1,4", "--json", str(out)], capture_output=True, text=True,
        env=environment(OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert {(r["batching"], r["concurrency"]) for r in result["rows"]} == {
        (m, c) for m in ("on", "off") for c in (1, 4)
    }
    assert all(r["wrong"] == 0 and r["requests"] > 0 for r in result["rows"])


@pytest.mark.slow  # a server process and explanations for a few seconds
def test_bench_serve_explain_load_smoke(tmp_path):
    pytest.importorskip("captum", reason="explanations need Captum")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench_serve.py"), "--fixture", "--requests", "50", "--seconds", "3",
         "--explain-load", "2", "--json", str(out)], capture_output=True, text=True,
        env=environment(OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    alone, loaded = json.loads(out.read_text())["rows"]
    assert (alone["explain_clients"], loaded["explain_clients"]) == (0, 2)
    assert alone["predict_errors"] == loaded["predict_errors"] == 0 and loaded["predicts"] > 0
    assert alone["p99_ms"] > 0 and loaded["p99_ms"] > 0
