"""Token encryption: round trip, ciphertext that reveals nothing, and the wrong key refused."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from dashtam.core.config import Settings
from dashtam.core.security import TokenEncryptionError, TokenEncryptor, encryptor_from_settings


def test_round_trip_and_ciphertext_hides_the_token() -> None:
    encryptor = TokenEncryptor(Fernet.generate_key())
    token = "sbx_at_0123456789abcdef"
    first, second = encryptor.encrypt(token), encryptor.encrypt(token)
    assert token.encode() not in first
    assert first != second  # random IV: equal tokens do not give equal rows
    assert encryptor.decrypt(first) == encryptor.decrypt(second) == token


def test_ciphertext_from_another_key_is_refused() -> None:
    ciphertext = TokenEncryptor(Fernet.generate_key()).encrypt("secret")
    with pytest.raises(TokenEncryptionError, match="another TOKEN_ENCRYPTION_KEY"):
        TokenEncryptor(Fernet.generate_key()).decrypt(ciphertext)


def test_tampered_ciphertext_is_refused() -> None:
    encryptor = TokenEncryptor(Fernet.generate_key())
    ciphertext = bytearray(encryptor.encrypt("secret"))
    ciphertext[-5] ^= 1
    with pytest.raises(TokenEncryptionError):
        encryptor.decrypt(bytes(ciphertext))


def test_malformed_key_is_refused_with_the_fix() -> None:
    with pytest.raises(TokenEncryptionError, match=r"Fernet\.generate_key"):
        TokenEncryptor("too-short")


def test_encryptor_uses_the_settings_key() -> None:
    key = Fernet.generate_key().decode()
    settings = Settings(_env_file=None, ENVIRONMENT="development", TOKEN_ENCRYPTION_KEY=SecretStr(key))
    ciphertext = encryptor_from_settings(settings).encrypt("t")
    assert Fernet(key).decrypt(ciphertext) == b"t"
