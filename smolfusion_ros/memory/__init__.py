"""Persistent conversation memory (SQLite through sqlite-utils)."""
