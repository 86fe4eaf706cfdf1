"""Credentials in pickles: sealed, so a pickled dataset or store never holds a secret in the clear.

Why: spawned DataLoader workers receive the dataset pickled, so a store must carry its
credentials across pickling. But a pickle also ends up in checkpoints, caches and bug reports,
where a plain secret would leak (and ``grep`` would find it). So the credential values are
encrypted with a random key that lives only in this process tree's environment
(``CDL_CREDENTIAL_SEAL_KEY``, created on first use and inherited by forked, spawned and
forkserver children), authenticated with an HMAC.

A pickle opened by an unrelated process (no key, or another key) cannot recover the secret: the
store falls back to the default credential chain (environment, ``~/.aws``) with a warning.

The keystream is SHA-256 in counter mode over (key, nonce, block number) - a PRF-based stream
cipher - and the tag is HMAC-SHA-256 over the nonce and ciphertext; both from the standard library.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import warnings
from typing import Any

__all__ = ["seal", "unseal", "ensure_key", "SEAL_ENV"]

SEAL_ENV = "CDL_CREDENTIAL_SEAL_KEY"
_TAG = "cdl-sealed-1"


def ensure_key() -> bytes:
    """This process tree's sealing key (created, and exported to children, on first use).

    NOTE: called when a store with credentials is built, i.e. before a DataLoader starts its
    workers or a forkserver, so every child inherits the key through its environment.
    """
    value = os.environ.get(SEAL_ENV)
    if not value or len(value) != 64:
        value = os.urandom(32).hex()
        os.environ[SEAL_ENV] = value
    return bytes.fromhex(value)


def _keystream(key: bytes, nonce: bytes, n: int) -> bytes:
    out = bytearray()
    block = 0
    while len(out) < n:
        out += hashlib.sha256(key + nonce + block.to_bytes(8, "little")).digest()
        block += 1
    return bytes(out[:n])


def seal(value: Any) -> tuple[str, bytes, bytes, bytes]:
    """A picklable, opaque form of a JSON-able ``value`` (e.g. a dict of credential strings)."""
    key = ensure_key()
    plain = json.dumps(value).encode()
    nonce = os.urandom(16)
    cipher = bytes(a ^ b for a, b in zip(plain, _keystream(key, nonce, len(plain))))
    tag = hmac.digest(key, nonce + cipher, "sha256")
    return (_TAG, nonce, cipher, tag)


def unseal(sealed: Any, default: Any, what: str = "credentials") -> Any:
    """The value :func:`seal` hid, or ``default`` (with a warning) when this process cannot open it."""
    try:
        tag_name, nonce, cipher, tag = sealed
        if tag_name != _TAG:
            raise ValueError
    except (TypeError, ValueError):
        warnings.warn(f"unreadable sealed {what} in a pickle; using the default credential chain", RuntimeWarning,
                      stacklevel=3)
        return default
    value = os.environ.get(SEAL_ENV)
    key = bytes.fromhex(value) if value and len(value) == 64 else None
    if key is None or not hmac.compare_digest(hmac.digest(key, nonce + cipher, "sha256"), tag):
        warnings.warn(f"this pickle's {what} were sealed by another process tree and cannot be recovered here; "
                      "using the default credential chain (environment, ~/.aws). Pass the credentials again.",
                      RuntimeWarning, stacklevel=3)
        return default
    plain = bytes(a ^ b for a, b in zip(cipher, _keystream(key, nonce, len(cipher))))
    return json.loads(plain)
