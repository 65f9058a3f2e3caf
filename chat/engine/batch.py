"""Steps that arrive together go to the database together (group commit).

Hundreds of people pressing Enter within a second each need a transaction that locks their
session and adds two messages; hundreds of replies ending within a second each need one that
stores their text. One after the other, each pays its own round trips and its own commit while
the next waits; here whatever is waiting when a database thread is free goes as one call of a
`*_many` step (`turn_start_many`, `reply_finish_many`: one lock statement, one write, one commit
for all of them), and each caller gets its own answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from chat.engine.replies import Steps
from chatproject import metrics

logger = logging.getLogger(__name__)

MAX_BATCH = 100

Request = TypeVar("Request")
Result = TypeVar("Result")


class Stopped(RuntimeError):
    """The runners of a group stopped before its step ran (the process, or its event loop, is ending)."""


class GroupCommit(Generic[Request, Result]):
    """Calls of `step_many(requests) -> results` (one result, or an exception, per request), as few as can be."""

    def __init__(self, steps: Steps, step_many: Callable[[Sequence[Request]], list[Any]], parallel: int) -> None:
        self.steps = steps
        self.step_many = step_many
        self.name = getattr(step_many, "__name__", "step")
        self._waiting: list[tuple[Request, asyncio.Future[Result]]] = []
        self._wake = asyncio.Event()
        self._stopped = False
        loop = asyncio.get_running_loop()
        self._runners = [loop.create_task(self._run()) for _ in range(max(1, parallel))]

    async def submit(self, request: Request) -> Result:
        """Run the step for `request` (with whatever else is waiting); raises what the step gave for it."""
        if self._stopped:  # the runners are gone (the loop is ending): the step runs alone
            (result,) = await self.steps.write(self.step_many, [request])
            if isinstance(result, BaseException):
                raise result
            return result
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        self._wake.set()
        return await future

    def _stop(self, batch: list[tuple[Request, asyncio.Future[Result]]]) -> None:
        """A runner was cancelled: whoever still waits is told (and may try again: it then runs alone)."""
        self._stopped = True
        waiting, self._waiting = self._waiting, []
        for _, future in [*batch, *waiting]:
            if not future.done():
                future.set_exception(Stopped(f"{self.name}: the process is stopping; try again."))

    async def _run(self) -> None:
        batch: list[tuple[Request, asyncio.Future[Result]]] = []
        try:
            while True:
                while not self._waiting:
                    self._wake.clear()
                    await self._wake.wait()
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                await self._carry_out(batch)
                batch = []
        except asyncio.CancelledError:
            self._stop(batch)
            raise

    async def _carry_out(self, batch: list[tuple[Request, asyncio.Future[Result]]]) -> None:
        metrics.BATCH_SIZE.labels(self.name).observe(len(batch))
        results: list[Any]
        try:
            results = await self.steps.write(self.step_many, [request for request, _ in batch])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if len(batch) == 1:
                results = [exc]
            else:
                # Something failed for the batch as a whole: each goes again on its own, so one bad request fails alone.
                logger.warning("A batch of %d %s failed; running them one by one", len(batch), self.name, exc_info=True)
                results = []
                for request, _ in batch:
                    try:
                        results += await self.steps.write(self.step_many, [request])
                    except Exception as alone:  # handed to its caller
                        results.append(alone)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def close(self) -> None:
        self._stop([])
        for runner in self._runners:
            runner.cancel()
