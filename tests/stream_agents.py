"""An agent that streams its output, for the tests of ADR 0042 section 6 (in-process and real
processes).

``Writer.tell`` streams ``intro`` chunks, then a step ``compose`` whose function streams
``words`` chunks (each naming the process that ran it, so a test tells a void run's chunks
from the run that counts) and, with a gate, waits halfway while the gate file exists; then
``outro`` chunks; it returns how many chunks it streamed.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel

from jetagents import Agent, DomainError, action


class WriterState(BaseModel):
    pass


class Word(BaseModel):
    n: int
    pid: int


class Writer(Agent[WriterState]):
    type_name = "writer"
    state_type = WriterState
    action_timeout_s = 120.0
    FAIL_AT: ClassVar[int | None] = None  # in-process tests: the step fails once at this word

    @action
    async def tell(
        self, intro: int = 3, words: int = 0, outro: int = 0, pace_s: float = 0.0, gate: str = "", fail: bool = False
    ) -> int:
        for k in range(intro):
            await self.stream(f"intro {k}")
            if pace_s:
                await asyncio.sleep(pace_s)
        if words:
            await self.step("compose", self._compose, words, pace_s, gate)
        for k in range(outro):
            await self.stream({"outro": k})
        if fail:
            raise DomainError("the writer refuses (the test says so)")
        return intro + words + outro

    @action
    async def converse(self) -> str:
        """Streams, suspends on signal ``go`` (nothing held in memory), streams again."""
        await self.stream("before")
        got = await self.wait_for("go", timeout_s=60)
        await self.stream(f"after {got}")
        return "done"

    async def _compose(self, words: int, pace_s: float, gate: str) -> int:
        for k in range(words):
            if gate and k == words // 2:
                while Path(gate).exists():  # the test holds the step here while the file exists
                    await asyncio.sleep(0.02)
            if k == type(self).FAIL_AT:
                type(self).FAIL_AT = None
                raise RuntimeError("the step fails once (the test says so)")
            await self.stream(Word(n=k, pid=os.getpid()))
            if pace_s:
                await asyncio.sleep(pace_s)
        return words


AGENTS = [Writer]
