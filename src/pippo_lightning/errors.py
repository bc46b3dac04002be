"""The errors pippo_lightning raises for bad input; the CLIs print them as one line."""

from __future__ import annotations


class PippoError(Exception):
    """Base of every user-facing error: a bad config, file, shape or missing weights."""


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range."""
