"""Ed25519 signatures over report bodies.

The agent signs the exact bytes of the uncompressed JSON body; the platform verifies those same
bytes before parsing them, so there is no canonicalisation step that two sides could disagree on.
Keys travel as raw 32-byte values in base64. (The ``*_bytes_raw`` methods spare the agent
importing cryptography's serialization module, with its SSH and cipher support: ~1 MB RSS.)
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class BadKey(ValueError):
    """A key or signature that is not well-formed base64 Ed25519 material."""


def new_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes_raw()


def private_key_from_bytes(raw: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes_raw()
    return base64.b64encode(raw).decode()


def load_public_key(b64: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise BadKey(f"not a base64 raw Ed25519 public key: {exc}") from None


def sign(key: Ed25519PrivateKey, body: bytes) -> str:
    return base64.b64encode(key.sign(body)).decode()


def verify(public_key: Ed25519PublicKey, body: bytes, signature_b64: str) -> bool:
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, binascii.Error):
        return False
    try:
        public_key.verify(signature, body)
    except InvalidSignature:
        return False
    return True
