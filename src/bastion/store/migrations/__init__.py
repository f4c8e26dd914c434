"""Alembic migrations of Bastion's tables, applied by :mod:`bastion.store.migrate`."""
