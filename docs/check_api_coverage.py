"""Fail (exit 1) when a name in ``nativemem.__all__`` has no ``auto*`` directive in docs/*.rst.

Run by .ci/run before the Sphinx build (``python docs/check_api_coverage.py``); the build itself
checks the same thing on what autodoc actually documented (docs/_ext/nativemem_docs.py), so a
directive that documents nothing fails there.  Needs nativemem importable, not Sphinx.
"""
from __future__ import annotations

import glob
import os
import re
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
_DIRECTIVE = re.compile(r"^\s*\.\.\s+auto(?:class|function|exception|data|decorator|attribute)::\s*(\S+)", re.M)
_CURRENT = re.compile(r"^\s*\.\.\s+(?:current)?module::\s*(\S+)", re.M)


def documented_names(docs: str = DOCS) -> set[str]:
    """Fully qualified names given to auto* directives (``.. currentmodule::`` applied)."""
    names: set[str] = set()
    for path in sorted(glob.glob(os.path.join(docs, "*.rst"))):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        module = ""
        events = sorted([(m.start(), "mod", m.group(1)) for m in _CURRENT.finditer(text)]
                        + [(m.start(), "obj", m.group(1)) for m in _DIRECTIVE.finditer(text)])
        for pos, kind, value in events:
            if kind == "mod":
                module = "" if value == "None" else value
            elif "." in value and value.split(".", 1)[0] == "nativemem":
                names.add(value)
            else:
                names.add(f"{module}.{value}" if module else value)
    return names


def missing(docs: str = DOCS) -> list[str]:
    import nativemem
    have = documented_names(docs)
    return [name for name in nativemem.__all__ if f"nativemem.{name}" not in have]


def main() -> int:
    gone = missing()
    if gone:
        print(f"{len(gone)} name(s) of nativemem.__all__ missing from the API reference (docs/*.rst):",
              file=sys.stderr)
        for name in gone:
            print(f"  nativemem.{name}", file=sys.stderr)
        return 1
    import nativemem
    print(f"docs cover all {len(nativemem.__all__)} names of nativemem.__all__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
