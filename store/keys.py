"""API keys: made, checked, listed and revoked; the database holds only a digest of each secret.

A key reads ``vm_<key id>_<secret>``. The key id is public: it finds the row (one primary-key
lookup, no scan over digests) and names the key in ``vidmem keys list`` and ``revoke``. The
secret is 256 random bits from ``secrets``; the row keeps its SHA-256 digest, compared with
``hmac.compare_digest`` so that the time taken says nothing about how much of a guess was right.
A plain hash (no salt, no slow KDF) is enough because the secret is random and long, not a
password a person chose: there is no dictionary to try against a stolen digest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.orm import Session

from store.models import ApiKey, utcnow
from store.repo import NotFound

PREFIX = "vm"
KEY_ID_BYTES = 8  # 16 hex characters: ids never collide in practice, and have no "_" to confuse parsing
SECRET_BYTES = 32
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_MAX = 200
LAST_USED_EVERY = timedelta(minutes=1)
"""``last_used_at`` is written at most this often per key, so that reads do not each cost a write."""

_DUMMY_DIGEST = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who a request's key says it is: the key's id and its tenant."""

    key_id: str
    tenant_id: str


@dataclass(frozen=True)
class NewKey:
    """A key just made: ``token`` is shown once, to whoever made it, and is not stored anywhere."""

    row: ApiKey
    token: str


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_tenant(tenant_id: str) -> str:
    """Tenant ids are short names (letters, digits, ``_.-``): they appear in logs and filters."""
    if not TENANT_PATTERN.fullmatch(tenant_id):
        raise ValueError(
            f"tenant {tenant_id!r} is not valid: 1 to 64 letters, digits, '_', '.' or '-', starting with a letter "
            "or digit"
        )
    return tenant_id


def create_key(session: Session, *, tenant_id: str, name: str = "") -> NewKey:
    """A new key for ``tenant_id``; the returned token is the only copy of its secret."""
    check_tenant(tenant_id)
    if len(name) > NAME_MAX:
        raise ValueError(f"the key name has {len(name)} characters; at most {NAME_MAX} are allowed")
    key_id, secret = secrets.token_hex(KEY_ID_BYTES), secrets.token_urlsafe(SECRET_BYTES)
    row = ApiKey(id=key_id, tenant_id=tenant_id, name=name, digest=digest(secret), created_at=utcnow())
    session.add(row)
    session.flush()
    return NewKey(row=row, token=f"{PREFIX}_{key_id}_{secret}")


def parse(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token, else None."""
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != PREFIX or len(key_id) != 2 * KEY_ID_BYTES or not secret:
        return None
    return key_id, secret


_KEY_CHECK = select(ApiKey.tenant_id, ApiKey.digest, ApiKey.revoked_at, ApiKey.last_used_at).where(
    ApiKey.id == bindparam("key_id")
)
"""Built once: every request runs it, and a statement built per call costs its cache key each time."""
_TOUCH = update(ApiKey).where(ApiKey.id == bindparam("key_id")).values(last_used_at=bindparam("touched_at"))


def authenticate(conn: Connection, token: str, *, now: datetime | None = None) -> Caller | None:
    """Who the unrevoked key ``token`` is, or None (malformed, unknown, wrong secret, revoked).

    One primary-key read of four columns (no ORM object: every request pays for this), and, at most
    once a minute per key, an UPDATE of ``last_used_at``.
    """
    parts = parse(token)
    row = conn.execute(_KEY_CHECK, {"key_id": parts[0]}).first() if parts else None
    expected = row.digest if row is not None else _DUMMY_DIGEST
    # always one digest and one comparison, so a wrong id costs the same time as a wrong secret
    matches = hmac.compare_digest(expected, digest(parts[1] if parts else token))
    if row is None or parts is None or not matches or row.revoked_at is not None:
        return None
    now = now or utcnow()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
        conn.execute(_TOUCH, {"key_id": parts[0], "touched_at": now})
    return Caller(key_id=parts[0], tenant_id=row.tenant_id)


def list_keys(session: Session, *, tenant_id: str | None = None) -> list[ApiKey]:
    """Keys oldest first, of one tenant when given; revoked ones included (they show ``revoked_at``)."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return list(session.scalars(query))


def revoke_key(session: Session, key_id: str) -> ApiKey:
    """Revoke a key at once (the next request with it is 401); revoking twice keeps the first time."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"API key {key_id!r} not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
