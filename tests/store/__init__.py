"""Tests of bastion.store, run against SQLite and PostgreSQL alike."""
