"""Dynamic batching: concurrent requests' texts gathered into one call of the model on one worker thread.

The event loop never runs the model. The first waiting request opens a batch; the batch closes when it holds
max_batch texts or max_wait_ms have passed, and runs on the worker thread while the next one gathers, so under
load batches fill by themselves. The wait is only spent while requests overlap (the last batch held more than
one): a lone client is answered at once instead of waiting for company that is not coming. Each request gets
its own texts' answers back, in its order. All model work (batches, warm-up, attributions) goes through the one
thread: rnnsent's fused CPU kernel and PyTorch's autograd state are not to be shared between threads, and one
thread keeps the outputs those of one caller. Other work (attributions) goes through a WorkQueue: bounded, and
run in small chunks between the batches, so that it never holds the thread for long.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable


class Unavailable(RuntimeError):
    """More texts are waiting than the queue may hold, or the batcher has stopped: answer 503, let the client retry."""


class TooLarge(ValueError):
    """One request is more than the queue can ever hold: answer 413, a retry cannot help."""


@dataclass
class _Job:
    texts: list
    future: asyncio.Future


class DynamicBatcher:
    """`await batcher.submit(texts)` -> work(texts)'s results for these texts, computed in a batch with other
    requests' texts. work(list) -> list of the same length runs on the worker thread."""

    def __init__(self, work: Callable[[list], list], max_batch: int = 64, max_wait_ms: float = 2.0,
                 max_queue: int = 4096):
        self.work, self.max_batch, self.max_wait, self.max_queue = work, max_batch, max_wait_ms / 1000, max_queue
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rnnsent-model")
        self._pending: collections.deque[_Job] = collections.deque()
        self._pending_texts = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0  # forwards run, and texts in them: /v1/model reports them, tests check batching with them
        self.texts = 0

    def start(self) -> None:
        """Begin gathering batches; call from inside the running event loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._gather())

    async def stop(self) -> None:
        """Answer what is queued, then stop the loop and the worker thread."""
        while self._pending:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, texts: list) -> list:
        if self._task is None or self._task.done():
            raise Unavailable("the server is not running its model (starting or shutting down)")
        if len(texts) > self.max_queue:
            raise TooLarge(f"the request holds {len(texts)} texts, more than the queue does ({self.max_queue}: "
                           "--max-queue); send fewer at a time")
        if self._pending_texts + len(texts) > self.max_queue:
            raise Unavailable(f"the server is busy ({self._pending_texts} texts waiting); retry shortly")
        job = _Job(list(texts), asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._pending_texts += len(job.texts)
        self._wake.set()
        return await job.future

    async def on_worker(self, fn: Callable[..., Any], *args) -> Any:
        """Run fn(*args) on the model's thread, after the batches already handed to it."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _gather(self) -> None:
        loop = asyncio.get_running_loop()
        overlapping = False  # did the last batch hold more than one request?
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            deadline = loop.time() + (self.max_wait if overlapping else 0.0)
            while self._pending_texts < self.max_batch and (left := deadline - loop.time()) > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except TimeoutError:
                    break
            jobs, n = [], 0
            while self._pending and (not jobs or n + len(self._pending[0].texts) <= self.max_batch):
                job = self._pending.popleft()
                self._pending_texts -= len(job.texts)
                if not job.future.done():  # a cancelled request (its client went away) costs no forward
                    jobs.append(job)
                    n += len(job.texts)
            if not jobs:
                continue
            overlapping = len(jobs) > 1
            texts = [t for job in jobs for t in job.texts]
            try:
                results = await loop.run_in_executor(self.executor, self.work, texts)
                if len(results) != len(texts):
                    raise RuntimeError(f"the model answered {len(results)} of {len(texts)} texts")
            except Exception as e:  # every request in the batch gets the error; the loop goes on
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            self.batches += 1
            self.texts += len(texts)
            start = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(results[start:start + len(job.texts)])
                start += len(job.texts)


class WorkQueue:
    """Work besides the batches (attributions): admitted up to `limit` units at once (texts x steps), and run on the
    batcher's worker one chunk at a time, so a batch waits for at most one chunk, and a request that goes away
    (its task cancelled) stops after the chunk that is running."""

    def __init__(self, batcher: DynamicBatcher, limit: int, unit: str = "units"):
        self.batcher, self.limit, self.unit = batcher, limit, unit
        self.admitted = 0  # units admitted now, running and waiting
        self.chunks = 0  # chunks the worker has run (those of requests gone since too)
        self._turn: asyncio.Lock | None = None

    @contextlib.contextmanager
    def admit(self, units: int):
        """Hold `units` of the queue for the block: TooLarge beyond the whole queue, Unavailable beyond what is free."""
        if units > self.limit:
            raise TooLarge(f"the request is {units} {self.unit}, more than the queue holds ({self.limit})")
        if self.admitted + units > self.limit:
            raise Unavailable(f"the server is busy ({self.admitted} {self.unit} of work waiting); retry shortly")
        self.admitted += units
        try:
            yield
        finally:
            self.admitted -= units

    async def run(self, fn: Callable[..., Any], *args) -> Any:
        """fn(*args) on the worker thread, once no other chunk of this queue is there. Cancelled, it lets the
        chunk on the worker finish before the next may start (the thread runs one thing at a time anyway)."""
        self._turn = self._turn or asyncio.Lock()
        async with self._turn:
            try:
                running = self.batcher.executor.submit(fn, *args)
            except RuntimeError:  # the executor has shut down
                raise Unavailable("the server is not running its model (shutting down)") from None
            done = asyncio.wrap_future(running)
            try:
                return await asyncio.shield(done)
            except asyncio.CancelledError:
                if not running.cancel():  # started: the thread finishes it before the next chunk may go
                    await asyncio.wait([done])
                raise
            finally:
                self.chunks += not running.cancelled()
