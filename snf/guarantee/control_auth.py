"""Control data from trusted writers only: a keyed MAC on every snf message's lineage.

Lineage headers and end markers steer state: a watermark makes later messages
of its origin count as duplicates, an end marker ends and deletes flows. So
whoever can write a topic could otherwise drop or end anything. Every message
an snf writer stamps with lineage (the capture agent, every worker) also
carries `snf-auth`: HMAC-SHA256, truncated to 16 bytes, over the lineage
header and the message value, under the pipeline's control key. A reader with
the key acts on lineage and end markers only when the tag checks out; a
message that claims lineage or ends input without it is dead-lettered.

The key is 32 random bytes, hex in SNF_CONTROL_KEY (docs/FAULT-TOLERANCE.md,
"Trusted control data"): `snf deploy` makes one per deployment and hands it
to its workers, `snf replay` reads the deployment's, Kubernetes mounts it from
a Secret. Without a key, readers check only the shape and the origin of
control data (bounded values, known upstream origins) and say so at start.
Kafka ACLs (docs/DEPLOY.md) keep foreign writers off the topics altogether.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

__all__ = [
    "AUTH_HEADER",
    "CONTROL_KEY_ENV",
    "ControlKeyError",
    "key_from_env",
    "new_key",
    "parse_key",
    "sign",
    "verify",
]

AUTH_HEADER = "snf-auth"
CONTROL_KEY_ENV = "SNF_CONTROL_KEY"
KEY_BYTES = 32
TAG_BYTES = 16


class ControlKeyError(ValueError):
    """A control key that is not 64 hex digits."""


def new_key() -> str:
    return secrets.token_hex(KEY_BYTES)


def parse_key(text: str) -> bytes:
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ControlKeyError(f"{CONTROL_KEY_ENV} must be {2 * KEY_BYTES} hex digits")
    return key


def key_from_env() -> bytes | None:
    text = os.environ.get(CONTROL_KEY_ENV)
    return parse_key(text) if text else None


def sign(key: bytes, lineage: bytes, value: bytes) -> bytes:
    # Length-prefixed, so no split of (lineage, value) signs as another.
    mac = hmac.new(key, len(lineage).to_bytes(4, "big"), hashlib.sha256)
    mac.update(lineage)
    mac.update(value)
    return mac.digest()[:TAG_BYTES]


def verify(key: bytes, lineage: bytes, value: bytes, tag: bytes | None) -> bool:
    return tag is not None and hmac.compare_digest(sign(key, lineage, value), tag)
