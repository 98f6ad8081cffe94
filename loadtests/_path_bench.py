"""What ``bench_host_path.py`` and ``bench_client_path.py`` share: counting Python opcodes by
function, running one tree in a child process of its own, and printing the trees side by side.

A tree is a directory holding ``shared/`` and ``services/`` (``git archive REV shared services
loadtests | tar -x -C DIR``); its child runs with that tree first on ``PYTHONPATH`` and prints
its result as the last line of its output, one JSON object with ``opcodes`` and ``us`` per
call, the CPU measurements ``us_all`` and ``by_function`` (name, opcodes per call).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HERE = __file__  # the wrappers of LoopCallbacks: never counted


class OpcodeCounter:
    """``sys.settrace`` with opcode events, counted per function (``dir/file.py:name``).

    ``counting()`` says whether an opcode counts now (default: always); ``skip`` names a file
    whose frames are never counted (the benchmark's own driving loop). ``loop``: count by the
    event loop's callbacks (``LoopCallbacks``), decided as each frame starts or resumes (a
    coroutine's frame does at each step of its task): what the loop's timers caused is left
    out, and the loop's own turns (its ``select``, its timer heap) go to ``loop_ops``."""

    def __init__(
        self, counting: Callable[[], bool] | None = None, skip: str | None = None, loop: LoopCallbacks | None = None
    ) -> None:
        self.ops: collections.Counter[str] = collections.Counter()
        self.loop_ops: collections.Counter[str] = collections.Counter()
        self._counting = counting or (lambda: True)
        self._skip = skip
        self._loop = loop

    def _trace(self, frame: Any, event: str, arg: Any) -> Any:
        code = frame.f_code
        if code.co_filename == self._skip or not self._counting():
            return None
        ops = self.ops
        if self._loop is not None:
            where = self._loop.now
            if where is TIMER or code.co_filename == _HERE:
                # a coroutine's frame keeps the tracer of its last step unless told otherwise
                frame.f_trace = None
                return None
            if where is None:
                ops = self.loop_ops
        frame.f_trace_opcodes = True
        key = f"{'/'.join(code.co_filename.rsplit('/', 2)[-2:])}:{code.co_name}"
        counting = self._counting

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "opcode" and counting():
                ops[key] += 1
            return local

        return local

    def start(self) -> None:
        sys.settrace(self._trace)

    def stop(self) -> None:
        sys.settrace(None)

    def result(self, calls: int, top: int) -> dict[str, Any]:
        """Opcodes per call over ``calls`` calls, and the ``top`` functions with the most."""
        return {
            "opcodes": sum(self.ops.values()) / calls,
            "by_function": [(k, v / calls) for k, v in self.ops.most_common(top)],
        }


IO, TIMER = "io", "timer"


class LoopCallbacks:
    """What caused the event loop's callback running now (``now``): ``TIMER`` for a timer's
    own (``TimerHandle``) and every callback scheduled while one of those ran, and so on (a
    task woken by a timeout, what it wakes in turn); ``IO`` for every other (what a socket's
    reading set off); None between callbacks (the loop's own turn).

    Work a timer causes comes at a rate per second of wall time (a wait that wakes each
    second, an expiry sweep), and the loop's turns are as many as the socket reads, which
    batch more messages the busier the process: under the tracer, which makes a round last
    seconds on a busy machine, either would move the count with the time a round takes.
    ``install`` wraps ``asyncio.events.Handle`` (the callbacks of every Python event loop)
    until ``uninstall``.
    """

    def __init__(self) -> None:
        self.now: str | None = None
        # callbacks scheduled by timer work, until they run (a plain set: a WeakSet's own
        # Python code would run, and count, for every callback)
        self._caused: set[Any] = set()
        self._saved: tuple[Any, Any] | None = None

    def install(self) -> None:
        from asyncio import events

        init, run = events.Handle.__init__, events.Handle._run
        self._saved = (init, run)
        timer, caused = events.TimerHandle, self._caused

        def __init__(handle: Any, *args: Any, **kwargs: Any) -> None:
            init(handle, *args, **kwargs)
            if self.now is TIMER and not isinstance(handle, timer):  # (a timer's own is known by its class)
                caused.add(handle)

        def _run(handle: Any) -> None:
            before = self.now
            self.now = TIMER if isinstance(handle, timer) or handle in caused else IO
            caused.discard(handle)
            try:
                run(handle)
            finally:
                self.now = before

        events.Handle.__init__ = __init__  # type: ignore[method-assign]
        events.Handle._run = _run  # type: ignore[method-assign]

    def uninstall(self) -> None:
        from asyncio import events

        assert self._saved is not None
        events.Handle.__init__, events.Handle._run = self._saved  # type: ignore[method-assign]
        self.now = None


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments both scripts take: the trees, the repetitions, the top functions."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", help="tree A (the baseline)")
    p.add_argument("--b", help="tree B")
    p.add_argument("--reps", type=int, default=5, help="CPU measurements (their median is printed)")
    p.add_argument("--top", type=int, default=0, help="also print each tree's N functions with the most opcodes")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


def quiet_logs() -> None:
    """The child's own logs would only slow it down: critical ones only."""
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))


def run_tree(script: str, tree: str, child_args: list[str]) -> dict[str, Any]:
    """Run ``script --child child_args`` on ``tree``; its result."""
    env = dict(os.environ, PYTHONPATH=f"{tree}/shared:{tree}/services", PYTHONHASHSEED="0")
    out = subprocess.run(
        [sys.executable, script, "--child", *child_args], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise RuntimeError(f"tree {tree} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def compare(script: str, trees: list[str], child_args: list[str]) -> None:
    """Run each tree (this checkout when none is given) and print them, with B/A for two."""
    trees = trees or [str(Path(script).resolve().parent.parent)]
    results = {t: run_tree(script, t, child_args) for t in trees}
    for tree, r in results.items():
        reps = " ".join(f"{u:.1f}" for u in r["us_all"])
        print(f"{tree}: {r['opcodes']:.0f} opcodes/call, {r['us']:.2f} us/call CPU (reps {reps})")
        if "opcodes_rounds" in r:  # rounds counted one by one: their spread is the count's noise
            rounds = " ".join(f"{n:.0f}" for n in r["opcodes_rounds"])
            print(f"  rounds: {rounds}; the loop's own turns: {r['loop_opcodes']:.0f} opcodes/command more")
        for name, n in r["by_function"]:
            print(f"  {n:7.1f}  {name}")
    if len(trees) == 2:
        a, b = (results[t] for t in trees)
        print(f"B/A: opcodes {b['opcodes'] / a['opcodes']:.3f}, CPU {b['us'] / a['us']:.3f} (above 1: B does more)")
