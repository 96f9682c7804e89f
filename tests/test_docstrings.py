"""Every public name in ``nativemem.__all__``, and every public method and property of the public
classes, has a docstring (what ``pydoc nativemem`` and ``help()`` show)."""
from __future__ import annotations

import inspect
from typing import Any, List

import nativemem


def _doc(obj: Any) -> str:
    return (getattr(obj, "__doc__", None) or "").strip()


def _is_namedtuple(cls: type) -> bool:
    return issubclass(cls, tuple) and hasattr(cls, "_fields")


def _class_doc_missing(cls: type) -> bool:
    doc = cls.__dict__.get("__doc__")
    if not doc or not doc.strip():
        return True
    if _is_namedtuple(cls):  # namedtuple's generated "Name(field, ...)" says nothing
        return doc.strip() == f"{cls.__name__}({', '.join(cls._fields)})"
    return False


def _own_classes(cls: type) -> List[type]:
    """cls and its bases defined by nativemem (its C types included), not builtins' or typing's."""
    return [c for c in cls.__mro__ if (c.__module__ or "").startswith("nativemem")]


def undocumented() -> List[str]:
    missing: List[str] = []
    for name in nativemem.__all__:
        obj = getattr(nativemem, name)
        if inspect.isclass(obj):
            if _class_doc_missing(obj):
                missing.append(name)
            seen = set()
            for owner in _own_classes(obj):
                for attr, raw in vars(owner).items():
                    if attr.startswith("_") or attr in seen:
                        continue
                    seen.add(attr)
                    if isinstance(raw, (staticmethod, classmethod)):
                        raw = raw.__func__
                    if not (inspect.isroutine(raw) or isinstance(raw, property) or inspect.isdatadescriptor(raw)
                            or inspect.ismethoddescriptor(raw)):
                        continue  # constants, class attributes
                    member = getattr(obj, attr, raw)
                    doc = inspect.getdoc(member) if inspect.isroutine(member) else _doc(raw)
                    if _is_namedtuple(owner) and (doc or "").startswith("Alias for field number"):
                        doc = ""
                    if not doc:
                        missing.append(f"{name}.{attr}")
        elif callable(obj):
            if not inspect.getdoc(obj):
                missing.append(name)
    return missing


def test_every_public_name_has_a_docstring():
    missing = undocumented()
    assert not missing, f"{len(missing)} public name(s) without a docstring:\n  " + "\n  ".join(missing)


def test_the_walk_sees_methods_properties_and_c_types():
    # guard against a walk that checks nothing: known members of each kind are visited
    assert _doc(nativemem.Pool.alloc) and _doc(nativemem.Buffer.free) and _doc(nativemem.Allocator.malloc)
    assert _own_classes(nativemem.Allocator)[-1].__module__ == "nativemem._core"
    assert _class_doc_missing(type("T", (), {}))
