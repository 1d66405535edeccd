"""Which provider client serves a provider row, chosen by its `provider_key`.

The registry is a FastAPI dependency (`get_provider_registry`) so tests replace the whole set of
providers with one override instead of patching modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated

from fastapi import Depends

from dashtam.core.config import Settings, get_settings
from dashtam.providers.base import ProviderClient
from dashtam.providers.sandbox import SandboxProvider

ProviderFactory = Callable[[Settings], ProviderClient]

# Implementations shipped with Dashtam; settings.PROVIDER_NAME picks the one that is configured.
BUILTIN_PROVIDERS: Mapping[str, ProviderFactory] = {"sandbox": SandboxProvider.from_settings}


class UnknownProviderError(LookupError):
    """No client is registered under the requested key."""


class ProviderRegistry:
    def __init__(self, clients: Mapping[str, ProviderClient]) -> None:
        self._clients = dict(clients)

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderRegistry:
        """The registry holding the one provider `settings.PROVIDER_NAME` configures."""
        factory = BUILTIN_PROVIDERS.get(settings.PROVIDER_NAME)
        if factory is None:
            raise UnknownProviderError(
                f"PROVIDER_NAME={settings.PROVIDER_NAME!r} is not a built-in provider; "
                f"use one of: {', '.join(sorted(BUILTIN_PROVIDERS))}"
            )
        return cls({settings.PROVIDER_NAME: factory(settings)})

    @property
    def keys(self) -> list[str]:
        return sorted(self._clients)

    def __contains__(self, key: object) -> bool:
        return key in self._clients

    def get(self, key: str) -> ProviderClient:
        try:
            return self._clients[key]
        except KeyError:
            raise UnknownProviderError(
                f"no provider client is configured for provider_key {key!r} "
                f"(configured: {', '.join(self.keys) or 'none'})"
            ) from None


def get_provider_registry(settings: Annotated[Settings, Depends(get_settings)]) -> ProviderRegistry:
    """FastAPI dependency: the configured providers (tests override it with their own registry)."""
    return ProviderRegistry.from_settings(settings)


ProviderRegistryDep = Annotated[ProviderRegistry, Depends(get_provider_registry)]
