"""Caching: the tiered L1/L2 cache library and the RFC 9111 HTTP response cache stage.

``from bastion.cache import Cache`` for application use; the engine builds one from
``[cache]`` as ``Bastion(settings).cache``.
"""

from bastion.cache.serial import SerializationError
from bastion.cache.tiered import Cache, CachedValue, Entry, Loader, Uncacheable

__all__ = ["Cache", "CachedValue", "Entry", "Loader", "SerializationError", "Uncacheable"]
