"""Password hashing: salted scrypt from the standard library; plain passwords are never stored."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# scrypt cost: 2**14 iterations of 8-byte blocks, about 16 MB and 50 ms per hash on a small server.
N, R, P = 2**14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
# A hash no password matches: for accounts restored from a backup, which carries no password hashes.
UNUSABLE = '!'


def hash_password(password: str) -> str:
    """Return a salted scrypt hash of `password` as `scrypt$n$r$p$salt$hash`."""
    if not password:
        raise ValueError('A password must not be empty.')
    salt = secrets.token_bytes(SALT_BYTES)
    key = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=KEY_BYTES)
    return f'scrypt${N}${R}${P}${_b64(salt)}${_b64(key)}'


def verify_password(password: str, stored: str) -> bool:
    """Tell whether `password` matches a hash made by `hash_password`."""
    try:
        scheme, n, r, p, salt, key = stored.split('$')
        if scheme != 'scrypt':
            return False
        expected = base64.b64decode(key)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def generate_password() -> str:
    """Return a random password for a first administrator."""
    return secrets.token_urlsafe(18)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode('ascii')
