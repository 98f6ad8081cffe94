"""Future combinators for the client: all of several requests, or the first to succeed,
with a timeout and the losers cancelled.

>>> refs = [client.agent("quote", q) for q in ("a", "b", "c")]  # doctest: +SKIP
>>> prices = await client.gather(*(r.request("price") for r in refs), timeout_s=2)  # doctest: +SKIP
>>> fastest = await client.first(*(r.request("price") for r in refs), timeout_s=2)  # doctest: +SKIP
>>> total = await client.then(refs[0].request("price"), lambda p: p * 2, timeout_s=2)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from .._core.errors import AgentTimeout

__all__ = ["first", "gather", "then"]


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks)


async def gather(*aws: Awaitable[Any], timeout_s: float | None = None) -> list[Any]:
    """Every result, in order. The first failure cancels the others and is raised; past
    ``timeout_s`` all are cancelled and :class:`AgentTimeout` is raised (``details.done``:
    how many had finished)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        async with asyncio.timeout(timeout_s):
            for fut in asyncio.as_completed(tasks):
                await fut  # raises the first failure as it happens
    except TimeoutError:
        done = sum(t.done() and not t.cancelled() for t in tasks)
        await _cancel([t for t in tasks if not t.done()])
        raise AgentTimeout(f"{done} of {len(tasks)} finished in {timeout_s}s", details={"done": done}) from None
    except BaseException:
        await _cancel([t for t in tasks if not t.done()])
        raise
    return [t.result() for t in tasks]


async def first(*aws: Awaitable[Any], timeout_s: float | None = None) -> Any:
    """The first result to succeed; the others are cancelled. When every one fails, the last
    failure is raised; past ``timeout_s``, :class:`AgentTimeout`."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    if not tasks:
        raise ValueError("first() needs at least one awaitable")
    last: BaseException | None = None
    try:
        async with asyncio.timeout(timeout_s):
            for fut in asyncio.as_completed(tasks):
                try:
                    return await fut
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the next one may succeed
                    last = exc
    except TimeoutError:
        raise AgentTimeout(f"none of {len(tasks)} succeeded in {timeout_s}s") from None
    finally:
        await _cancel([t for t in tasks if not t.done()])
    assert last is not None
    raise last


async def then(aw: Awaitable[Any], fn: Callable[[Any], Any], *, timeout_s: float | None = None) -> Any:
    """``fn(result)`` of ``aw`` (awaited too when ``fn`` is async); a failure of ``aw`` is
    raised without calling ``fn``. ``timeout_s`` bounds the whole chain: past it, whichever
    part is running is cancelled and :class:`AgentTimeout` is raised."""
    task = asyncio.ensure_future(aw)
    try:
        async with asyncio.timeout(timeout_s):
            out = fn(await task)
            if inspect.isawaitable(out):
                out = await out
            return out
    except TimeoutError:
        raise AgentTimeout(f"the chain did not finish in {timeout_s}s") from None
    finally:
        await _cancel([task] if not task.done() else [])
