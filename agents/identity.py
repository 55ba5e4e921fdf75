"""The agent's identity: its Ed25519 key pair and what enrolment with the platform returned.

Files in the state directory (created 0700):

* ``agent.key``: the raw 32-byte private key, base64, mode 0600. Like ssh, the agent refuses to
  use a key file that others can read: a leaked key lets anyone sign reports that money is paid
  on.
* ``identity.json``: agent id, site id and name, platform URL, public key, enrolment time.

Enrolment spends a one-time token: the key pair is generated first (or the one left by an
enrolment that failed half-way is reused), the public half is sent with the token, and the
identity is written only after the platform accepted it. Both files are written atomically.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from jinsuan.contract import signing
from jinsuan.contract.wire import EnrolRequest, EnrolResponse, ErrorResponse

KEY_FILE = "agent.key"
IDENTITY_FILE = "identity.json"


class IdentityError(Exception):
    """The state directory holds no usable identity, or enrolment failed; says why."""


@dataclass(frozen=True, slots=True)
class Enrolment:
    agent_id: str
    site_id: int
    site_name: str
    platform_url: str
    public_key: str
    enrolled_at: str  # ISO 8601, UTC


@dataclass(frozen=True, slots=True)
class Identity:
    enrolment: Enrolment
    key: Ed25519PrivateKey

    @property
    def agent_id(self) -> str:
        return self.enrolment.agent_id


def ensure_state_dir(state_dir: Path) -> Path:
    state_dir = Path(state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return state_dir


def load_key(state_dir: Path) -> Ed25519PrivateKey:
    path = Path(state_dir) / KEY_FILE
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise IdentityError(f"no agent key at {path}: enrol the agent first") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"agent key {path} is accessible by others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}"
        )
    try:
        return signing.private_key_from_bytes(base64.b64decode(path.read_bytes(), validate=True))
    except ValueError as exc:
        raise IdentityError(f"agent key {path} is not a base64 Ed25519 key: {exc}") from None


def load_or_create_key(state_dir: Path) -> Ed25519PrivateKey:
    state_dir = ensure_state_dir(state_dir)
    if (state_dir / KEY_FILE).exists():
        return load_key(state_dir)
    key = signing.new_private_key()
    _write_private(state_dir / KEY_FILE, base64.b64encode(signing.private_key_bytes(key)))
    return key


def load_identity(state_dir: Path) -> Identity:
    path = Path(state_dir) / IDENTITY_FILE
    try:
        enrolment = Enrolment(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise IdentityError(
            f"agent not enrolled: {path} does not exist; run `jinsuan agent enrol`"
        ) from None
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{path} is damaged: {exc}") from None
    key = load_key(state_dir)
    if signing.public_key_b64(key) != enrolment.public_key:
        raise IdentityError(
            f"{path} was enrolled with a different key than {Path(state_dir) / KEY_FILE}"
        )
    return Identity(enrolment, key)


def enrol(
    state_dir: Path,
    platform_url: str,
    token: str,
    *,
    hostname: str | None = None,
    force: bool = False,
    client: httpx.Client | None = None,
    timeout_s: float = 30.0,
) -> Identity:
    """Register this agent's public key with the platform, spending ``token``.

    An agent already enrolled refuses unless ``force``, which starts a new identity with a new
    key (batches still in the spool keep the old agent id and signature, which the platform
    still accepts).
    """
    state_dir = ensure_state_dir(state_dir)
    platform_url = platform_url.rstrip("/")
    if (state_dir / IDENTITY_FILE).exists():
        if not force:
            current = load_identity(state_dir).enrolment
            raise IdentityError(
                f"already enrolled as {current.agent_id} for site {current.site_name!r} "
                f"at {current.platform_url}; enrol again with --force to replace it"
            )
        (state_dir / KEY_FILE).unlink(missing_ok=True)
    key = load_or_create_key(state_dir)
    request = EnrolRequest(
        token=token, public_key=signing.public_key_b64(key), hostname=hostname or _hostname()
    )
    url = f"{platform_url}/v1/agents/enrol"
    own_client = client is None
    http = client or httpx.Client(timeout=timeout_s)
    try:
        response = http.post(url, content=request.model_dump_json(),
                             headers={"Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        raise IdentityError(f"cannot reach the platform at {url}: {exc}") from None
    finally:
        if own_client:
            http.close()
    if response.status_code != 200:
        raise IdentityError(f"enrolment refused by {url}: {describe_error(response)}")
    try:
        answer = EnrolResponse.model_validate_json(response.content)
    except ValidationError as exc:
        raise IdentityError(f"{url} answered enrolment with an unexpected body: {exc}") from None
    enrolment = Enrolment(
        agent_id=answer.agent_id,
        site_id=answer.site_id,
        site_name=answer.site_name,
        platform_url=platform_url,
        public_key=request.public_key,
        enrolled_at=datetime.now(UTC).isoformat(),
    )
    _write_private(state_dir / IDENTITY_FILE, json.dumps(asdict(enrolment), indent=2).encode())
    return Identity(enrolment, key)


def describe_error(response: httpx.Response) -> str:
    """``HTTP 422 invalid at series[0].points[1]: reason`` from the platform's error JSON."""
    try:
        body = ErrorResponse.model_validate_json(response.content).error
    except ValidationError:
        snippet = response.text[:200].strip() or "(empty body)"
        return f"HTTP {response.status_code}: {snippet}"
    where = f" at {body.field}" if body.field else ""
    return f"HTTP {response.status_code} {body.code}{where}: {body.reason}"


def _hostname() -> str:
    return socket.gethostname() or "unknown-host"


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600 (never briefly world-readable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # the umask cannot widen it, but a left-over tmp file could be wider
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
