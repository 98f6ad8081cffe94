"""Payloads by reference (ADR 0042 section 9) without a server: the reference form, the
digest check, and the host's ``Blobs`` over an in-memory store of its own port."""

from __future__ import annotations

import orjson
import pytest

from jetagents import HostSettings
from jetagents._core.blobref import BlobUnreadable, check, is_ref, name_of, owner_of, ref_of
from jetagents._host.blobs import Blobs


class DictStore:
    """The ``BlobStore`` port in memory (the port is ours, not a library's)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.puts = 0

    async def has(self, name: str) -> bool:
        return name in self.data

    async def put(self, name: str, data: bytes) -> None:
        self.puts += 1
        self.data[name] = data

    async def get(self, name: str) -> bytes | None:
        return self.data.get(name)


def _blobs(**overrides: object) -> tuple[Blobs, DictStore]:
    settings = HostSettings(host_id="t", payload_ref_threshold_bytes=1024, **overrides)  # type: ignore[arg-type]
    blobs, store = Blobs(settings, None), DictStore()
    blobs.bind(store)
    return blobs, store


def test_the_reference_form_is_exact() -> None:
    ref = ref_of(b"[1,2]")
    assert ref == {"$ref": name_of(b"[1,2]"), "bytes": 5} and is_ref(ref)
    assert not is_ref({**ref, "extra": 1})
    assert not is_ref({"$ref": ref["$ref"], "bytes": "5"})
    assert not is_ref({"$ref": ref["$ref"].upper(), "bytes": 5})
    assert not is_ref([ref])


def test_a_name_is_scoped_by_the_agent_and_an_unscoped_one_is_still_read() -> None:
    scoped, plain = name_of(b"[1]", "counter.c-1"), name_of(b"[1]")
    assert scoped == "counter.c-1/" + plain and owner_of(scoped) == "counter.c-1" and owner_of(plain) == ""
    assert is_ref({"$ref": scoped, "bytes": 3}) and is_ref({"$ref": plain, "bytes": 3})
    check(scoped, b"[1]")
    check(plain, b"[1]")
    with pytest.raises(BlobUnreadable, match="does not match its digest"):
        check("counter.c-2/" + plain[:-1] + "0", b"[1]")
    for bad in ("counter/" + plain, "a.b.c/" + plain, "a b.c/" + plain, "/" + plain, "counter.c1/"):
        assert not is_ref({"$ref": bad, "bytes": 3}), bad


def test_check_names_what_is_wrong() -> None:
    name = name_of(b"x")
    check(name, b"x")
    with pytest.raises(BlobUnreadable, match="missing from agt_blobs"):
        check(name, None, "commit 3 of a/b")
    with pytest.raises(BlobUnreadable, match=r"\(named by here\) does not match its digest"):
        check(name, b"y", "here")
    assert BlobUnreadable("x").code == "internal" and not BlobUnreadable.retryable


async def test_a_large_commit_keeps_references_and_equal_content_is_written_once() -> None:
    blobs, store = _blobs()
    big = "z" * 5000
    commit = {
        "n": 3,
        "events": [{"type": "E", "data": {"text": big}}, {"type": "E", "data": {"small": 1}}],
        "result": big,
        "j": {"k": "step", "i": 0, "value": big},
    }
    out = orjson.loads(await blobs.offload_commit(orjson.dumps(commit), "a.b"))
    assert is_ref(out["events"][0]["data"]) and out["events"][1]["data"] == {"small": 1}
    assert is_ref(out["result"]) and out["result"] == out["j"]["value"]  # the same JSON: one blob
    assert store.puts == 2
    await blobs.offload_commit(orjson.dumps(commit), "a.b")
    assert store.puts == 2  # written once
    assert all(name.startswith("a.b/sha256:") for name in store.data)  # under the agent's name
    other = orjson.loads(await blobs.offload_commit(orjson.dumps(commit), "a.c"))
    assert store.puts == 4 and other["result"]["$ref"] == out["result"]["$ref"].replace("a.b/", "a.c/")
    assert await blobs.resolve(out["events"][0]["data"]) == {"text": big}
    assert await blobs.resolve({"plain": True}) == {"plain": True}


async def test_only_step_values_of_journal_entries_are_offloaded() -> None:
    blobs, _ = _blobs()
    signal = {"n": 1, "events": [], "j": {"k": "signal", "value": "s" * 5000}}
    out = orjson.loads(await blobs.offload_commit(orjson.dumps(signal), "a.b"))
    assert out["j"]["value"] == "s" * 5000


async def test_a_fresh_host_detects_a_tampered_blob() -> None:
    blobs, store = _blobs()
    ref = await blobs.offload(["v"] * 1000, "a.b")
    store.data[ref["$ref"]] = orjson.dumps(["w"] * 1000)
    fresh = Blobs(HostSettings(host_id="t2"), None)  # no cache: reads the store
    fresh.bind(store)
    with pytest.raises(BlobUnreadable, match="does not match its digest"):
        await fresh.resolve(ref, "a test")


async def test_the_cache_is_bounded_in_bytes() -> None:
    blobs, store = _blobs(blob_cache_bytes=12_000)
    refs = [await blobs.offload(str(i) * 5000, "a.b") for i in range(4)]
    assert blobs._cached_bytes <= 12_000
    store.data.clear()
    assert await blobs.resolve(refs[-1]) == "3" * 5000  # recent: from the cache
    with pytest.raises(BlobUnreadable):
        await blobs.resolve(refs[0])  # evicted, and gone from the store


async def test_a_reply_too_large_becomes_an_applied_refusal_with_the_reference() -> None:
    blobs, store = _blobs()
    body = orjson.loads(await blobs.reply_body("r" * (2 * 1024 * 1024), "a.b"))
    assert body["ok"] is False and body["error"]["code"] == "payload_too_large"
    details = body["error"]["details"]
    assert details["applied"] is True and details["$ref"] in store.data and details["$ref"].startswith("a.b/")
    recorded = await blobs.offload("q" * 2000, "a.b")  # a recorded result by reference that fits: resolved
    assert orjson.loads(await blobs.reply_body(recorded, "a.b")) == {"ok": True, "result": "q" * 2000}
