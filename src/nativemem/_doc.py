"""Docstrings for the fields of NamedTuple results (pydoc shows them instead of "Alias for field
number N")."""
from __future__ import annotations

from typing import Any


def document_fields(cls: Any, **docs: str) -> None:
    """Set the docstring of each named field accessor of the NamedTuple class ``cls``; every
    field must be given one, so a new field cannot go undocumented."""
    fields = tuple(cls._fields)
    if set(docs) != set(fields):
        raise AssertionError(f"{cls.__name__}: fields {fields}, documented {tuple(docs)}")
    for name, text in docs.items():
        getattr(cls, name).__doc__ = text
