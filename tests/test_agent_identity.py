"""Agent key pair and enrolment, against the loopback receiver's enrolment endpoint."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.identity import (
    IDENTITY_FILE,
    KEY_FILE,
    IdentityError,
    enrol,
    load_identity,
)
from jinsuan.contract import signing
from tests.agent_peers import Receiver

TOKEN = "jse_" + "t" * 32


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    peer = Receiver().start()
    peer.add_token(TOKEN)
    yield peer
    peer.stop()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_enrol_registers_public_key_and_stores_private_files(tmp_path, receiver):
    state = tmp_path / "state"
    identity = enrol(state, receiver.url + "/", TOKEN, hostname="gpu-node-1")
    assert identity.agent_id == "agt_0001"
    assert receiver.state.keys["agt_0001"] == signing.public_key_b64(identity.key)
    assert (mode(state), mode(state / KEY_FILE), mode(state / IDENTITY_FILE)) == (
        0o700, 0o600, 0o600)
    saved = json.loads((state / IDENTITY_FILE).read_text())
    assert saved["platform_url"] == receiver.url and saved["site_name"] == "test-site"
    again = load_identity(state)
    assert again.enrolment == identity.enrolment
    body = b"report"
    public = signing.load_public_key(identity.enrolment.public_key)
    assert signing.verify(public, body, signing.sign(again.key, body))


def test_refused_token_keeps_key_for_the_next_try_and_writes_no_identity(tmp_path, receiver):
    state = tmp_path / "state"
    with pytest.raises(IdentityError, match=r"HTTP 401 unauthenticated at token: .*unknown"):
        enrol(state, receiver.url, "jse_" + "x" * 32)
    assert not (state / IDENTITY_FILE).exists()
    key_text = (state / KEY_FILE).read_bytes()
    identity = enrol(state, receiver.url, TOKEN)
    assert (state / KEY_FILE).read_bytes() == key_text
    assert receiver.state.keys[identity.agent_id] == signing.public_key_b64(identity.key)


def test_second_enrolment_needs_force_and_then_uses_a_new_key(tmp_path, receiver):
    state = tmp_path / "state"
    first = enrol(state, receiver.url, TOKEN)
    receiver.add_token(TOKEN + "2")
    with pytest.raises(IdentityError, match=f"already enrolled as {first.agent_id}"):
        enrol(state, receiver.url, TOKEN + "2")
    second = enrol(state, receiver.url, TOKEN + "2", force=True)
    assert second.agent_id != first.agent_id
    assert second.enrolment.public_key != first.enrolment.public_key


def test_key_readable_by_others_is_refused(tmp_path, receiver):
    state = tmp_path / "state"
    enrol(state, receiver.url, TOKEN)
    (state / KEY_FILE).chmod(0o644)
    with pytest.raises(IdentityError, match=r"mode 0644\); run: chmod 600"):
        load_identity(state)


def test_not_enrolled_and_unreachable_platform_are_clear(tmp_path, receiver):
    with pytest.raises(IdentityError, match=r"agent not enrolled.*jinsuan agent enrol"):
        load_identity(tmp_path)
    receiver.stop()
    with pytest.raises(IdentityError, match="cannot reach the platform"):
        enrol(tmp_path / "s", receiver.url, TOKEN)
