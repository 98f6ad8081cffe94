"""Live throughput and latency for the dashboard's charts, from real figures only:

* durable commands stored per second: the growth of ``AGT_CMD``'s last sequence (schedules'
  own messages included), commits per second: that of ``AGT_EVT`` (stream info, the server's
  count; between two samples);
* commands answered per second by each host: the growth of ``processed`` in its heartbeat
  (``member.<host>``) between two of its own timestamps (calls included);
* latency: each host's ``latency_ms`` summary of its last commands, as it advertised it.

A sample is taken when a chart is asked for, at most once per ``min_interval_s``, and the
last ``keep`` samples are kept in this process's memory: the charts start empty when the
dashboard starts, and show nothing made up in between.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from .._client.inspection import Inspector, _doc

KEEP = 150  # samples kept (at one per 2 s of polling: five minutes)


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float  # time.monotonic() of the dashboard
    cmd_seq: int
    evt_seq: int
    hosts: dict[str, dict[str, Any]]  # host -> its heartbeat value


class Live:
    """The samples of one dashboard process."""

    def __init__(self, *, keep: int = KEEP, min_interval_s: float = 1.0) -> None:
        self.samples: deque[Sample] = deque(maxlen=keep)
        self.min_interval_s = min_interval_s

    async def sample(self, ins: Inspector) -> None:
        now = time.monotonic()
        if self.samples and now - self.samples[-1].t_s < self.min_interval_s:
            return
        cmd = await ins.io.stream_state(ins.topology.cmd_stream)
        evt = await ins.io.stream_state(ins.topology.evt_stream)
        members = await ins.io.kv_scan(ins.topology.cluster_bucket, "member.")
        hosts = {k.removeprefix("member."): _doc(e.data) for k, e in members.items()}
        self.samples.append(Sample(now, int(cmd.get("last_seq", 0)), int(evt.get("last_seq", 0)), hosts))

    def throughput(self) -> dict[str, list[tuple[float, float]]]:
        """Per second, between consecutive samples: commands stored, commits; and per host,
        commands answered (between consecutive heartbeats it wrote)."""
        out: dict[str, list[tuple[float, float]]] = {"commands stored": [], "commits": []}
        pairs = list(zip(list(self.samples)[:-1], list(self.samples)[1:], strict=True))
        for a, b in pairs:
            dt = b.t_s - a.t_s
            if dt > 0:
                out["commands stored"].append((b.t_s, max(0, b.cmd_seq - a.cmd_seq) / dt))
                out["commits"].append((b.t_s, max(0, b.evt_seq - a.evt_seq) / dt))
        for host in sorted({h for s in self.samples for h in s.hosts}):
            points: list[tuple[float, float]] = []
            last: tuple[int, int] | None = None  # (ts_ms, processed) of the last heartbeat seen
            for s in self.samples:
                beat = s.hosts.get(host)
                if beat is None:
                    last = None
                    continue
                ts_ms, done = int(beat.get("ts_ms", 0)), int(beat.get("processed", 0))
                if last is not None and ts_ms > last[0] and done >= last[1]:
                    points.append((s.t_s, (done - last[1]) * 1000 / (ts_ms - last[0])))
                if last is None or ts_ms > last[0]:
                    last = (ts_ms, done)
            out[f"{host} answered"] = points
        return out

    def latency(self) -> dict[str, list[tuple[float, float]]]:
        """Each host's p50 and p99 over its last commands, as its heartbeats said."""
        out: dict[str, list[tuple[float, float]]] = {}
        for host in sorted({h for s in self.samples for h in s.hosts}):
            for q in ("p50", "p99"):
                out[f"{host} {q}"] = [
                    (s.t_s, float(s.hosts[host]["latency_ms"][f"{q}_ms"]))
                    for s in self.samples
                    if f"{q}_ms" in ((s.hosts.get(host) or {}).get("latency_ms") or {})
                ]
        return out
