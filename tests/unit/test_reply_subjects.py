"""Which subjects a host may answer on, and which reply prefixes it may be configured with
(pure, no NATS). The host publishes a reply where the sender says, with its own (broad)
permissions, so this check is what keeps replies out of logs, buckets and ``$JS.API``."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from jetagents import ClientSettings, HostSettings
from jetagents._core.ids import MAX_REPLY_SUBJECT_LEN, is_reply_subject, validate_reply_prefix

INBOX = ["_INBOX."]

# what a client may try to make a host write to (issue 12), and malformed literals
ATTACKS = [
    "agt.evt.counter.victim",
    "agt.dlq.counter.victim",
    "agt.cmd.counter.victim",
    "agt.p.3.counter.victim",
    "agt.sys.host.h1.fwd",
    "$KV.agt_meta.counter.victim",
    "$KV.agt_snap.counter.victim",
    "$KV.agt_state.k",
    "$KV.agt_cluster.member.ghost",
    "$KV.agt_cluster.ring",
    "$JS.API.STREAM.PURGE.AGT_EVT",
    "$JS.API.STREAM.DELETE.AGT_DLQ",
    "$JS.ACK.AGT_CMD.c.1.2.3.4.5",
    "$SYS.REQ.SERVER.PING",
    "$O.bucket.x",
    "$SRV.PING",
    "_INBOX",  # the prefix without a token
    "_INBOX.",
    "_INBOXX.a",
    "_INBOX.>",
    "_INBOX.*",
    "_INBOX.a.*.b",
    "_INBOX.a.>",
    "_INBOX.a*b",
    "_INBOX..a",
    "_INBOX.a.",
    "_INBOX.a b",
    "_INBOX.a\tb",
    "_INBOX.a\r\nPUB x 1",
    "_INBOX.a\x00",
    "_INBOX.a\x7f",
    "_INBOX.\u00e9",
    "_INBOX.\udcff",  # a surrogate (undecodable byte)
    "_INBOX." + "a" * MAX_REPLY_SUBJECT_LEN,
    "",
    " _INBOX.a",
]


@pytest.mark.parametrize("subject", ATTACKS)
def test_non_inbox_and_malformed_subjects_are_refused(subject: str) -> None:
    assert not is_reply_subject(subject, INBOX)


@pytest.mark.parametrize(
    "subject",
    [
        "_INBOX.a",
        "_INBOX.client.oYvSwpB3N2d4e6X3mVZ1aZ.1",  # the Python client's Inbox under the shipped prefix
        "_INBOX.host.oYvSwpB3N2d4e6X3mVZ1aZ.Ab12",  # nats-py's request()
        "_INBOX.x-y_z.~!#%&'()+,-/:;<=?@[]^`{|}",  # any other printable ASCII is a literal token
        "_INBOX." + "a" * (MAX_REPLY_SUBJECT_LEN - 7),
    ],
)
def test_inbox_subjects_are_accepted(subject: str) -> None:
    assert is_reply_subject(subject, INBOX)


def test_a_prefix_alone_is_no_reply_subject() -> None:
    assert not is_reply_subject("_INBOX.", INBOX)
    assert not is_reply_subject("_INBOX.client.", ["_INBOX.client.", "_INBOX."])


def test_non_strings_are_refused() -> None:
    assert not is_reply_subject(None, INBOX)
    assert not is_reply_subject(b"_INBOX.a", INBOX)


def test_only_the_configured_prefixes_are_accepted() -> None:
    prefixes = ["_INBOX.client.", "_R_.app."]
    assert is_reply_subject("_INBOX.client.x.1", prefixes)
    assert is_reply_subject("_R_.app.x", prefixes)
    assert not is_reply_subject("_INBOX.host.x.1", prefixes)
    assert not is_reply_subject("_INBOX.client", prefixes)
    assert not is_reply_subject("anything", [])


literal_token = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=".*>"), min_size=1, max_size=30
)


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(literal_token, min_size=1, max_size=6))
def test_every_literal_subject_under_the_prefix_is_accepted(tokens: list[str]) -> None:
    subject = "_INBOX." + ".".join(tokens)
    assert is_reply_subject(subject, INBOX) == (len(subject) <= MAX_REPLY_SUBJECT_LEN)


@settings(max_examples=500, deadline=None)
@given(subject=st.text(max_size=80))
def test_an_accepted_subject_is_always_a_literal_inbox(subject: str) -> None:
    if is_reply_subject(subject, INBOX):
        assert subject.startswith("_INBOX.")
        tokens = subject.split(".")
        assert all(tokens) and "*" not in subject and ">" not in subject
        assert all(0x21 <= ord(c) <= 0x7E for c in subject)
    assert not is_reply_subject("agt.evt." + subject, INBOX)
    assert not is_reply_subject("$" + subject, INBOX)


# the rule as first written: tokens of the allowed characters, joined by single dots
_RULE = re.compile(r"[!-)+-\-/-=?-~]+(?:\.[!-)+-\-/-=?-~]+)*")


@settings(max_examples=300, deadline=None)
@given(tail=st.text(alphabet=st.sampled_from("aZ9_.*>$~ \t\x7f\u00e9-"), max_size=24))
def test_the_literal_check_agrees_with_the_rule_written_as_tokens(tail: str) -> None:
    subject = "_INBOX." + tail
    assert is_reply_subject(subject, INBOX) == (bool(tail) and _RULE.fullmatch(subject) is not None)
    assert is_reply_subject(subject, ["_INBOX"]) == (_RULE.fullmatch(subject) is not None)


@settings(max_examples=300, deadline=None)
@given(subject=st.text(max_size=60), bad=st.sampled_from([" ", "\t", "\n", "\r", "\x00", "\x7f", "*", ">", "\u00ff"]))
def test_one_bad_character_anywhere_is_refused(subject: str, bad: str) -> None:
    cut = len(subject) // 2
    assert not is_reply_subject("_INBOX.a" + subject[:cut] + bad + subject[cut:], INBOX)


# -- the prefixes a host may be configured with --------------------------------------------
@pytest.mark.parametrize("prefix", ["_INBOX.", "_INBOX.client.", "replies.app1.", "_R_."])
def test_valid_reply_prefixes(prefix: str) -> None:
    assert validate_reply_prefix(prefix, "agt") == prefix


@pytest.mark.parametrize(
    ("prefix", "root"),
    [
        ("$JS.", "agt"),
        ("$KV.", "agt"),
        ("$KV.agt_cluster.", "agt"),
        ("$SYS.", "agt"),
        ("$O.", "agt"),
        ("$SRV.", "agt"),
        ("$", "agt"),
        ("agt.", "agt"),
        ("agt.inbox.", "agt"),
        ("myapp.evt.", "myapp"),
        ("_INBOX.", "_INBOX"),  # a root that is the prefix's first token
        ("_INBOX", "agt"),  # no trailing dot: would match _INBOXX...
        (".", "agt"),
        ("", "agt"),
        ("_INBOX..", "agt"),
        ("_INBOX.*.", "agt"),
        ("_INBOX.>.", "agt"),
        ("_IN BOX.", "agt"),
        ("_INBOX.\u00e9.", "agt"),
        ("x" * 200 + ".", "agt"),
    ],
)
def test_invalid_reply_prefixes(prefix: str, root: str) -> None:
    with pytest.raises(ValueError, match="reply prefix"):
        validate_reply_prefix(prefix, root)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("JETAGENTS_"):
            monkeypatch.delenv(key)


@pytest.mark.usefixtures("clean_env")
def test_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert HostSettings().reply_prefixes == ["_INBOX."]
    assert HostSettings().inbox_prefix == ClientSettings().inbox_prefix == "_INBOX"
    monkeypatch.setenv("JETAGENTS_INBOX_PREFIX", "_INBOX.host")
    monkeypatch.setenv("JETAGENTS_REPLY_PREFIXES", '["_INBOX.client.", "_INBOX.host."]')
    s = HostSettings()
    assert (s.inbox_prefix, s.reply_prefixes) == ("_INBOX.host", ["_INBOX.client.", "_INBOX.host."])
    assert ClientSettings().inbox_prefix == "_INBOX.host"


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    "kwargs",
    [
        {"reply_prefixes": []},
        {"reply_prefixes": ["$JS."]},
        {"reply_prefixes": ["_INBOX.", "$KV."]},
        {"reply_prefixes": ["agt."]},
        {"reply_prefixes": ["app.x."], "subject_root": "app"},
        {"reply_prefixes": ["_INBOX"]},
        {"inbox_prefix": "_INBOX."},
        {"inbox_prefix": "_INBOX.*"},
        {"inbox_prefix": "$JS"},
        {"inbox_prefix": "_INBOX host"},
        {"inbox_prefix": ""},
        # the host's own inbox must be answerable (hosts answer each other there)
        {"inbox_prefix": "replies", "reply_prefixes": ["_INBOX."]},
    ],
)
def test_settings_refuse_bad_prefixes(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        HostSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("value", ["_INBOX.", "$INBOX", "a..b", "a b", "a.>"])
def test_client_settings_refuse_bad_inbox_prefix(value: str) -> None:
    with pytest.raises(ValidationError):
        ClientSettings(inbox_prefix=value)
