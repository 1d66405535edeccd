"""OAuth provider clients: the interface, the offline sandbox, and the registry that picks one."""

from dashtam.providers.base import ProviderClient, ProviderError, TokenSet
from dashtam.providers.registry import (
    BUILTIN_PROVIDERS,
    ProviderRegistry,
    ProviderRegistryDep,
    UnknownProviderError,
    get_provider_registry,
)
from dashtam.providers.sandbox import SandboxProvider

__all__ = [
    "BUILTIN_PROVIDERS",
    "ProviderClient",
    "ProviderError",
    "ProviderRegistry",
    "ProviderRegistryDep",
    "SandboxProvider",
    "TokenSet",
    "UnknownProviderError",
    "get_provider_registry",
]
