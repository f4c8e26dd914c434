"""Durable and shared state used by every capability.

- :mod:`~bastion.store.database`: the SQLAlchemy async engine (SQLite or PostgreSQL).
- :mod:`~bastion.store.models`: the declarative ``Base`` of every table, and ``bastion_keys``.
- :mod:`~bastion.store.migrate`: Alembic migrations, applied under a cross-instance lock.
- :mod:`~bastion.store.keys`: generated keys by purpose, wrapped with the key-encryption key.
- :mod:`~bastion.store.redis`: the Redis client factory.
- :mod:`~bastion.store.stores`: everything above, started and checked together.

Every failure surfaces as :class:`~bastion.store.errors.StoreError`. Modules are imported from
their own paths so that loading the configuration does not load the database drivers.
"""
