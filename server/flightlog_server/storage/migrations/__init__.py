"""Alembic environment and revisions of the Flightlog schema (see ``storage/migrate.py``)."""
