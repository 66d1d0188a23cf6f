#!/usr/bin/env python3
"""Load on `rnnsent serve` over loopback: requests/s, texts/s and p50/p99 latency at several concurrencies, with
dynamic batching on and off (off: --max-batch 1, one forward per text), and a soak mode of mixed valid and invalid
requests that reports the server's memory and checks every answer. It starts its own server processes, talks to
127.0.0.1 only, and every run is bounded in requests and seconds. Run it alone on the machine.

    python tools/bench_serve.py                     # the table (docs/serve.md)
    python tools/bench_serve.py --soak 180          # the soak run
    python tools/bench_serve.py --model-only        # no server: what batching gains in the model alone
    python tools/bench_serve.py --explain-load 6    # predict's latency while 6 clients ask for explanations
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout too

from rnnsent.serve.process import ServerProcess, environment  # noqa: E402

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "imdb" / "reviews.json"
BAD_BODIES = [  # (body, the status it must get): a sample of what tests/test_serve.py sends
    (b'{"texts": ["a"', 400), (b"texts=hello", 400), (b'{"texts": []}', 422), (b'{"texts": [5]}', 422),
    (b'{"texts": "a film"}', 422), (b'["a film"]', 422), (b'{"texts": ["a"], "x": 1}', 422),
    (b'{"texts": ["' + b"x" * 20_001 + b'"]}', 413), (b"[" * 50_000 + b"]" * 50_000, 400),
    (b'{"texts": ["\xff\xfe"]}', 400),
]


def reviews(n: int, seed: int, fixture: bool) -> list[str]:
    """n IMDB test reviews (all lengths, as users send them), drawn with `seed`; the test fixture's with --fixture."""
    if fixture:
        pool = [r["t"] for r in json.loads(FIXTURE.read_text())]
    else:
        from rnnsent.data import load_imdb_reviews

        pool = [t for t, _ in load_imdb_reviews("test", download=False)]
    rng = random.Random(seed)
    return [rng.choice(pool) for _ in range(n)]


class Connection:
    """One keep-alive HTTP/1.1 connection: the least client work per request, so the server is what is measured."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        data = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, data

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def load(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    """Send the bodies (in turn, each to the next free connection) with `concurrency` connections, stopping at the
    last body or after `seconds`. Returns the answers and the latencies."""
    host, port = url.removeprefix("http://").split(":")
    next_body, latencies, answers = 0, [], {}
    deadline = time.perf_counter() + seconds

    async def client():
        nonlocal next_body
        conn = Connection(host, int(port))
        try:
            while next_body < len(bodies) and time.perf_counter() < deadline:
                i, next_body = next_body, next_body + 1
                start = time.perf_counter()
                try:
                    answers[i] = await conn.post("/v1/predict", bodies[i])
                except (OSError, asyncio.IncompleteReadError) as e:  # counted as a failure, and a new connection
                    answers[i] = (0, str(e).encode())
                    conn.close()
                latencies.append(time.perf_counter() - start)
        finally:
            conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {"answers": answers, "latencies": latencies, "seconds": time.perf_counter() - start}


def server_counts(url: str) -> dict:
    with urllib.request.urlopen(url + "/v1/model", timeout=30) as r:
        info = json.loads(r.read())
    return {"batches": info["batches"], "texts": info["batched_texts"]}


def check(answers: dict, bodies_texts: list[list[str]], expected: dict) -> int:
    """How many answers differ from rnnsent.predict's (label, or probability by more than 1e-5)."""
    wrong = 0
    for i, (status, data) in answers.items():
        if status != 200:
            wrong += 1
            continue
        for text, got in zip(bodies_texts[i], json.loads(data)["results"]):
            want = expected[text]
            wrong += got["label"] != want.label or abs(got["probability"] - want.probability) > 1e-5
    return wrong


def expected_answers(checkpoint: str, texts) -> dict:
    import rnnsent

    loaded = rnnsent.load_checkpoint(checkpoint)
    unique = list(dict.fromkeys(texts))
    return dict(zip(unique, rnnsent.predict(loaded, unique)))


def table(args) -> dict:
    texts = reviews(args.requests * args.texts_per_request, args.seed, args.fixture)
    groups = [texts[i:i + args.texts_per_request] for i in range(0, len(texts), args.texts_per_request)]
    bodies = [json.dumps({"texts": g}).encode() for g in groups]
    expected = expected_answers(args.checkpoint, texts)
    modes = {"on": ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)],
             "off": ["--max-batch", "1", "--max-wait-ms", "0"]}
    rows = []
    for mode, flags in modes.items():
        env = environment(OMP_NUM_THREADS=str(args.threads))
        with ServerProcess(args.checkpoint, *flags, "--threads", str(args.threads), env=env) as server:
            asyncio.run(load(server.url, bodies[:20], 4, 30))  # warm the allocator and the connections
            for concurrency in args.concurrency:
                before = server_counts(server.url)
                run = asyncio.run(load(server.url, bodies, concurrency, args.seconds))
                after = server_counts(server.url)
                n = len(run["answers"])
                sent = sum(len(groups[i]) for i in run["answers"])
                batches = after["batches"] - before["batches"]
                row = {"batching": mode, "concurrency": concurrency, "requests": n, "seconds": round(run["seconds"], 3),
                       "requests_per_s": n / run["seconds"], "texts_per_s": sent / run["seconds"],
                       "p50_ms": 1000 * statistics.median(run["latencies"]),
                       "p99_ms": 1000 * percentile(run["latencies"], 0.99),
                       "texts_per_batch": (after["texts"] - before["texts"]) / max(batches, 1),
                       "wrong": check(run["answers"], groups, expected)}
                rows.append(row)
                print(format_row(row), flush=True)
    ratios = {}
    for c in args.concurrency:
        on, off = (next(r for r in rows if r["batching"] == m and r["concurrency"] == c) for m in ("on", "off"))
        ratios[c] = on["texts_per_s"] / off["texts_per_s"]
    top = max(args.concurrency)
    on_top = next(r for r in rows if r["batching"] == "on" and r["concurrency"] == top)
    result = {"rows": rows, "texts_per_s_on_over_off": ratios,
              "target": {"concurrency": top, "ratio_at_least": 5.0, "p99_ms_under": 250.0,
                         "ratio": ratios[top], "p99_ms": on_top["p99_ms"],
                         "met": ratios[top] >= 5.0 and on_top["p99_ms"] < 250.0}}
    print("texts/s, batching on / off: " + ", ".join(f"concurrency {c}: {r:.2f}x" for c, r in ratios.items()))
    print(f"target at concurrency {top} (>= 5x, p99 < 250 ms): {'met' if result['target']['met'] else 'NOT met'}")
    return result


HEADER = (f"{'batching':<9}{'conc.':>6}{'requests':>9}{'req/s':>9}{'texts/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'texts/fwd':>10}{'wrong':>6}")


def format_row(r: dict) -> str:
    return (
        f"{r['batching']:<9}{r['concurrency']:>6}{r['requests']:>9}{r['requests_per_s']:>9.1f}{r['texts_per_s']:>9.1f}"
        f"{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}{r['texts_per_batch']:>10.1f}{r['wrong']:>6}"
    )


def model_only(args) -> dict:
    """The ceiling batching can reach: the server's own model work (rnnsent.serve.app.predict_work) in this process,
    on one thread, over the same reviews: one text per forward against --max-batch texts per call."""
    import torch

    import rnnsent
    from rnnsent.serve.app import predict_work

    torch.set_num_threads(args.threads)
    loaded = rnnsent.load_checkpoint(args.checkpoint)
    texts = reviews(min(args.requests, 512), args.seed, args.fixture)
    rates = {}
    for batch in (1, args.max_batch):
        work = predict_work(loaded, batch)
        work(texts[:batch])  # warm
        start = time.perf_counter()
        for i in range(0, len(texts), batch):
            work(texts[i:i + batch])
        rates[batch] = len(texts) / (time.perf_counter() - start)
    result = {"texts": len(texts), "texts_per_s_one_per_forward": rates[1],
              f"texts_per_s_{args.max_batch}_per_call": rates[args.max_batch],
              "ratio": rates[args.max_batch] / rates[1]}
    print(json.dumps(result))
    return result


def soak(args) -> dict:
    """args.soak seconds of mixed valid (1-4 review texts) and invalid requests at concurrency args.soak_concurrency;
    the server's RSS (psutil) at the start, every 10 s and at the end; every answer checked."""
    import psutil

    rng = random.Random(args.seed)
    pool = reviews(500, args.seed, args.fixture)
    expected = expected_answers(args.checkpoint, pool)
    env = environment(OMP_NUM_THREADS=str(args.threads))
    flags = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--threads", str(args.threads)]
    counts = {"valid": 0, "valid_right": 0, "valid_wrong": 0, "invalid": 0, "invalid_right_status": 0, "5xx": 0}
    rss = []
    with ServerProcess(args.checkpoint, *flags, env=env) as server:
        process = psutil.Process(server.pid)
        host, port = server.host, server.port

        async def client(deadline):
            conn = Connection(host, port)
            while time.monotonic() < deadline:
                if rng.random() < 0.25:
                    body, status = rng.choice(BAD_BODIES)
                    got, _ = await conn.post("/v1/predict", body)
                    counts["invalid"] += 1
                    counts["invalid_right_status"] += got == status
                    counts["5xx"] += got >= 500
                    conn.close()  # (an answer before the body is read may close the connection)
                    continue
                texts = [rng.choice(pool) for _ in range(rng.randint(1, 4))]
                got, data = await conn.post("/v1/predict", json.dumps({"texts": texts}).encode())
                counts["valid"] += 1
                counts["5xx"] += got >= 500
                ok = got == 200 and all(
                    r["label"] == expected[t].label and abs(r["probability"] - expected[t].probability) <= 1e-5
                    for t, r in zip(texts, json.loads(data)["results"]))
                counts["valid_right" if ok else "valid_wrong"] += 1
            conn.close()

        async def watch(deadline):
            while time.monotonic() < deadline:
                rss.append((round(time.monotonic() - start, 1), process.memory_info().rss))
                await asyncio.sleep(10)

        async def main():
            deadline = time.monotonic() + args.soak
            await asyncio.gather(watch(deadline), *(client(deadline) for _ in range(args.soak_concurrency)))

        start = time.monotonic()
        asyncio.run(main())
        rss.append((round(time.monotonic() - start, 1), process.memory_info().rss))
    mib = [(t, r / 2**20) for t, r in rss]
    result = {"seconds": args.soak, "concurrency": args.soak_concurrency, **counts,
              "rss_mib": [(t, round(m, 1)) for t, m in mib], "rss_start_mib": round(mib[0][1], 1),
              "rss_after_10s_mib": round(mib[1][1], 1) if len(mib) > 2 else None, "rss_end_mib": round(mib[-1][1], 1),
              "exit_code": server.returncode}
    print(json.dumps(result))
    return result


def explain_load(args) -> dict:
    """Predict's latency (one review per request, one client at a time) for args.seconds with no explanations asked
    for, then for args.seconds while args.explain_load clients each keep asking /v1/explain for 8 reviews of 2,000
    characters (a refused one, 503, asks again 0.1 s later). One server, --threads args.threads."""
    pool = reviews(2000, args.seed, args.fixture)
    long = [t[:2000] for t in sorted(set(pool), key=len, reverse=True)[:8]]
    explain_body = json.dumps({"texts": long}).encode()
    bodies = [json.dumps({"texts": [t]}).encode() for t in pool[:args.requests]]
    env = environment(OMP_NUM_THREADS=str(args.threads))
    rows = []
    with ServerProcess(args.checkpoint, "--threads", str(args.threads), env=env) as server:
        host, port = server.host, server.port

        async def asking(counts: dict, stop: asyncio.Event):
            conn = Connection(host, port)
            while not stop.is_set():
                try:
                    status, _ = await conn.post("/v1/explain", explain_body)
                except (OSError, asyncio.IncompleteReadError):
                    status = 0
                    conn.close()
                counts[status] = counts.get(status, 0) + 1
                if status != 200:
                    await asyncio.sleep(0.1)
            conn.close()

        async def phase(clients: int) -> dict:
            counts, stop = {}, asyncio.Event()
            askers = [asyncio.create_task(asking(counts, stop)) for _ in range(clients)]
            await asyncio.sleep(1.0 if clients else 0)  # the explanations under way first
            run = await load(server.url, bodies, 1, args.seconds)
            stop.set()
            for task in askers:  # (a client leaving: a server that notices stops its work)
                task.cancel()
            await asyncio.gather(*askers, return_exceptions=True)
            return {"explain_clients": clients, "predicts": len(run["latencies"]),
                    "p50_ms": 1000 * statistics.median(run["latencies"]),
                    "p99_ms": 1000 * percentile(run["latencies"], 0.99), "max_ms": 1000 * max(run["latencies"]),
                    "predict_errors": sum(status != 200 for status, _ in run["answers"].values()),
                    "explains_answered": counts.get(200, 0),
                    "explains_refused": sum(counts.values()) - counts.get(200, 0),
                    "explained_texts_per_s": 8 * counts.get(200, 0) / run["seconds"]}

        async def warm():  # the allocator, and Captum's import
            await load(server.url, bodies[:20], 1, 30)
            conn = Connection(host, port)
            await conn.post("/v1/explain", json.dumps({"texts": long[:1]}).encode())
            conn.close()

        asyncio.run(warm())
        for clients in (0, args.explain_load):
            rows.append(asyncio.run(phase(clients)))
            print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows, "explain_texts": len(long), "explain_chars": [len(t) for t in long]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="gru", help="what the server serves [gru]")
    p.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8, 64],
                   help="clients at once, comma-separated [1,8,64]")
    p.add_argument("--requests", type=int, default=3000, help="most requests per concurrency [3000]")
    p.add_argument("--seconds", type=float, default=10.0, help="most seconds per concurrency [10]")
    p.add_argument("--texts-per-request", type=int, default=1, help="review texts in each request [1]")
    p.add_argument("--max-batch", type=int, default=64, help="the batching server's --max-batch [64]")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="the batching server's --max-wait-ms [2]")
    p.add_argument("--threads", type=int, default=1, help="the server's --threads (and OMP_NUM_THREADS) [1]")
    p.add_argument("--seed", type=int, default=0, help="which reviews, in which order [0]")
    p.add_argument("--fixture", action="store_true", help="the test fixture's 24 reviews instead of IMDB's test split")
    p.add_argument("--soak", type=float, default=None, metavar="SECONDS", help="a soak run of this long instead")
    p.add_argument("--soak-concurrency", type=int, default=16, help="clients at once in the soak run [16]")
    p.add_argument("--model-only", action="store_true",
                   help="no server: the model work alone in this process, one text per forward against --max-batch")
    p.add_argument("--explain-load", type=int, default=None, metavar="CLIENTS",
                   help="predict's latency alone, then while CLIENTS clients ask /v1/explain for 8 long reviews")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    if args.soak is not None and not 0 < args.soak <= 3600:
        p.error("--soak takes 1 to 3600 seconds")
    if args.soak is None and not args.model_only and args.explain_load is None:
        print(HEADER, flush=True)
    result = (soak(args) if args.soak is not None else model_only(args) if args.model_only else
              explain_load(args) if args.explain_load is not None else table(args))
    from bench_report import machine_info

    result["machine"] = machine_info("cpu")
    result["command"] = "python tools/bench_serve.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
