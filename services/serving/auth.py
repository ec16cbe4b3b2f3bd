"""API keys on the public API: a bearer token checked against hashed keys, mapped to an identity.

The keys file holds one ``identity:sha256-hex-of-key`` per line (``#`` starts a comment; blank
lines are skipped), so the file (a Kubernetes Secret) never holds a key itself; ``hash_key``
makes a line's hash. A client sends ``authorization: Bearer <key>`` metadata; ``identify`` hashes
it and compares against every known hash in constant time, returning the identity or raising
``Unauthenticated`` with what to fix.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from pathlib import Path

from specdec.core.errors import Unauthenticated

_LINE = re.compile(r"^([A-Za-z0-9._:@/+=-]{1,128}):([0-9a-fA-F]{64})$")


def hash_key(key: str) -> str:
    """The SHA-256 hex digest a keys file stores for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """The known keys (identity, SHA-256 digest)."""

    def __init__(self, entries: Sequence[tuple[str, str]]) -> None:
        self.entries = [(identity, bytes.fromhex(digest)) for identity, digest in entries]

    @classmethod
    def load(cls, path: str | Path) -> ApiKeys:
        """Read a keys file; a malformed line is an error naming it (never silently skipped)."""
        entries = []
        for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            match = _LINE.match(line)
            if match is None:
                raise ValueError(
                    f"{path}:{number}: expected 'identity:sha256hex' "
                    "(make the hash with `specdec hash-key`)"
                )
            entries.append((match[1], match[2].lower()))
        if not entries:
            raise ValueError(f"{path}: no keys in the file")
        return cls(entries)

    def identify(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
        """The identity whose key ``metadata`` carries; ``Unauthenticated`` otherwise."""
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if header is None:
            raise Unauthenticated(
                "this server needs an API key: send metadata 'authorization: Bearer <key>' "
                "(specdec generate --api-key)"
            )
        scheme, _, key = (header.decode() if isinstance(header, bytes) else header).partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("the authorization metadata must read 'Bearer <key>'")
        digest = bytes.fromhex(hash_key(key.strip()))
        found = ""
        for identity, known in self.entries:  # no early exit: the time says nothing
            if hmac.compare_digest(digest, known) and not found:
                found = identity
        if not found:
            raise Unauthenticated("the API key is not known to this server")
        return found
