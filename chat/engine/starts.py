"""Turn starts that arrive together go to the database together.

Hundreds of people pressing Enter within a second each need a transaction that locks their
session and adds two messages. One after the other, each pays its own round trips and its own
commit while the next waits; here whatever is waiting when a database thread is free goes as
one call of `turn_start_many` (one lock statement, one insert, one commit for all of them:
group commit), and each sender gets its own answer.
"""

from __future__ import annotations

import asyncio
import logging

from chat.engine.replies import Steps
from chat.turn.turns import Turn, TurnRequest, turn_start_many
from chatproject import metrics

logger = logging.getLogger(__name__)

MAX_BATCH = 100


class TurnStarts:
    def __init__(self, steps: Steps, parallel: int) -> None:
        self.steps = steps
        self._waiting: list[tuple[TurnRequest, asyncio.Future[Turn]]] = []
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._runners = [loop.create_task(self._run()) for _ in range(max(1, parallel))]

    async def start(self, request: TurnRequest) -> Turn:
        """Start the turn (with whatever else is waiting); raises what `turn_start` would raise."""
        future: asyncio.Future[Turn] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            while not self._waiting:
                self._wake.clear()
                await self._wake.wait()
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            metrics.TURN_START_BATCH.observe(len(batch))
            results: list[Turn | BaseException]
            try:
                results = await self.steps.write(turn_start_many, [request for request, _ in batch])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if len(batch) == 1:
                    results = [exc]
                else:
                    # Something failed for the batch as a whole: each goes again on its own, so one bad turn fails alone.
                    logger.warning("A batch of %d turn starts failed; starting them one by one", len(batch), exc_info=True)
                    results = []
                    for request, _ in batch:
                        try:
                            results += await self.steps.write(turn_start_many, [request])
                        except Exception as alone:  # handed to its sender
                            results.append(alone)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def close(self) -> None:
        for runner in self._runners:
            runner.cancel()

