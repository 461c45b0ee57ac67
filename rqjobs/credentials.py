"""Stored git credentials: encrypted with a key derived from JOBS_SECRET_KEY, never kept in plain text."""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rqjobs.exceptions import RepositoryUnauthorized, SecretKeyMissing
from rqjobs.settings import Settings, get_settings

ENCRYPTED_PREFIX = 'fernet:'
_HKDF_INFO = b'rqjobs git credentials v1'


def encrypt_secret(plain: str, settings: Settings | None = None) -> str:
    """Encrypt a git credential for storage with a key derived from JOBS_SECRET_KEY; returns `fernet:...`."""
    if not isinstance(plain, str):
        raise TypeError(f'encrypt_secret takes a string, not {type(plain).__name__}')
    return ENCRYPTED_PREFIX + _fernet(settings or get_settings()).encrypt(plain.encode('utf-8')).decode('ascii')


def decrypt_secret(token: str, settings: Settings | None = None) -> str:
    """Decrypt a credential made by `encrypt_secret`; a wrong key or a tampered value is `RepositoryUnauthorized`."""
    fernet = _fernet(settings or get_settings())
    if not isinstance(token, str) or not token.startswith(ENCRYPTED_PREFIX):
        raise RepositoryUnauthorized(f'stored credential is not an encrypted value (no {ENCRYPTED_PREFIX} prefix)')
    try:
        return fernet.decrypt(token[len(ENCRYPTED_PREFIX) :].encode('ascii')).decode('utf-8')
    except (InvalidToken, UnicodeError):
        raise RepositoryUnauthorized(
            'stored credential cannot be decrypted with JOBS_SECRET_KEY (was the key changed?)'
        ) from None


def _fernet(settings: Settings) -> Fernet:
    if not settings.secret_key:
        raise SecretKeyMissing(
            'JOBS_SECRET_KEY is not set, so git credentials cannot be stored or read; set it to a '
            'long random value, for example JOBS_SECRET_KEY=$(python3 -c "import secrets; '
            'print(secrets.token_urlsafe(32))").'
        )
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(settings.secret_key.encode())
    return Fernet(base64.urlsafe_b64encode(key))
