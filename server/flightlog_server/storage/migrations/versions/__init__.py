"""Alembic revisions, oldest first by file name; Alembic orders them by ``down_revision``."""
