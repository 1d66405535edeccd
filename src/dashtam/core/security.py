"""Encryption of provider tokens at rest.

Tokens are the keys to a user's financial accounts, so the database only ever holds Fernet
ciphertext (AES-128-CBC + HMAC-SHA256, with a timestamp): a dump of the tables alone reveals
nothing. The key comes from `settings.TOKEN_ENCRYPTION_KEY` and never touches the database.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from cryptography.fernet import Fernet, InvalidToken
from fastapi import Depends

from dashtam.core.config import Settings, get_settings


class TokenEncryptionError(Exception):
    """The key is unusable, or a ciphertext was not made with it (wrong key, corrupted row)."""


class TokenEncryptor:
    """Encrypts and decrypts token strings with one Fernet key."""

    def __init__(self, key: str | bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError) as exc:
            raise TokenEncryptionError(
                "TOKEN_ENCRYPTION_KEY is not a Fernet key (urlsafe base64 of 32 bytes); create one with "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
            ) from exc

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode("utf-8"))

    def decrypt(self, ciphertext: bytes) -> str:
        try:
            return self._fernet.decrypt(ciphertext).decode("utf-8")
        except InvalidToken as exc:
            # Saying which check failed would help an attacker more than an operator.
            raise TokenEncryptionError(
                "a stored token could not be decrypted: it was encrypted with another "
                "TOKEN_ENCRYPTION_KEY or the row is corrupted"
            ) from exc


@lru_cache(maxsize=4)
def _encryptor_for(key: str) -> TokenEncryptor:
    return TokenEncryptor(key)


def encryptor_from_settings(settings: Settings) -> TokenEncryptor:
    """The encryptor for `settings` (cached per key: building a Fernet is cheap, but not free)."""
    key = settings.TOKEN_ENCRYPTION_KEY
    if key is None:  # The settings validator fills it in testing and refuses None elsewhere.
        raise TokenEncryptionError("TOKEN_ENCRYPTION_KEY is not set")
    return _encryptor_for(key.get_secret_value())


def get_token_encryptor(settings: Annotated[Settings, Depends(get_settings)]) -> TokenEncryptor:
    """FastAPI dependency: the encryptor for the application's settings."""
    return encryptor_from_settings(settings)


TokenEncryptorDep = Annotated[TokenEncryptor, Depends(get_token_encryptor)]
