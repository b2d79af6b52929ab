"""The one exception type the data layer raises for bad datasets."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file is missing, malformed or inconsistent; the message names the file and the key at fault."""


__all__ = ["DatasetError"]
