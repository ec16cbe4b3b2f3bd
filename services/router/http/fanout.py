"""The choices of one HTTP request, generated concurrently through the router's own loop.

Each choice is validated by ``parse_request`` (the gRPC face's checks) and runs ``generate``
(the same admission queue, replicas and speculation loop) in a task of its own; their responses
arrive tagged with the choice's index, in the order they were produced.

``start`` validates every choice and waits until each has produced its first response (or
failed): admission refusals, a missing verifier and bad input surface before an HTTP answer
has begun, so they keep their status codes even when streaming. ``close`` cancels what is still
running; the streams' own clean-up frees their slots.

Non-goals: retrying a failed choice (the loop already replaces a failed verifier).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from specdec.router.http.convert import Choice
from specdec.router.request import Request, parse_request
from specdec.router.speculation import RouterDeps, generate
from specdec.v1 import generation_pb2

_DONE = None  # a choice's last queue item
# Choices being cancelled: the event loop keeps only weak references to tasks.
_CLOSING: set[asyncio.Task[None]] = set()


class Fanout:
    """The choices of one request: ``start``, then ``events``, and always ``close``."""

    def __init__(self, deps: RouterDeps, choices: Sequence[Choice], identity: str) -> None:
        self.deps = deps
        self.choices = choices
        self.identity = identity
        self.requests: list[Request] = []
        self._queue: asyncio.Queue[
            tuple[int, generation_pb2.GenerateResponse | BaseException | None]
        ] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._first: list[tuple[int, generation_pb2.GenerateResponse | BaseException | None]] = []

    async def start(self) -> None:
        """Validate, start every choice, and wait for each one's first response; raises the
        first error a choice met meanwhile (the others are cancelled)."""
        deps = self.deps
        for choice in self.choices:
            request = await parse_request(
                choice.message, deps.tokenizer, deps.limits, self.identity
            )
            self.requests.append(request)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._pump(choice.index, request))
            for choice, request in zip(self.choices, self.requests, strict=True)
        ]
        started: set[int] = set()
        while len(started) < len(self.choices):
            item = await self._queue.get()
            if isinstance(item[1], BaseException):
                await self.close()
                raise item[1]
            started.add(item[0])
            self._first.append(item)

    async def events(self) -> AsyncIterator[tuple[int, generation_pb2.GenerateResponse]]:
        """(choice index, response) until every choice has finished; raises a choice's error."""
        pending = len(self.choices)
        buffered = list(self._first)
        self._first.clear()
        while pending:
            index, item = buffered.pop(0) if buffered else await self._queue.get()
            if item is _DONE:
                pending -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item

    async def close(self) -> None:
        """Cancel the choices still running and wait for their clean-up (their streams hold
        slots on the replicas). Waiting never cancels them again: a Starlette response whose
        client went away cancels the awaiting task over and over (anyio's cancel scopes), and
        an ``await task`` would pass each of those on into the clean-up itself."""
        running = [task for task in self._tasks if not task.done()]
        for task in running:
            task.cancel()
            _CLOSING.add(task)  # referenced until done, even if this awaiting is cancelled
            task.add_done_callback(_CLOSING.discard)
        if running:
            await asyncio.wait(running)

    async def _pump(self, index: int, request: Request) -> None:
        try:
            async for response in generate(request, self.deps):
                await self._queue.put((index, response))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the reader, which maps it to an HTTP error
            await self._queue.put((index, exc))
            return
        await self._queue.put((index, _DONE))
