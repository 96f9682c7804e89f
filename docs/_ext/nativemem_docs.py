"""Sphinx glue for nativemem's API reference (loaded by docs/conf.py).

* Signatures of C methods: the C extension types of ``nativemem._core`` (Allocator, Buffer, Pool,
  StringTable, Interned; subclassed or re-exported by the package) define their methods without
  ``__text_signature__``, so ``inspect.signature`` cannot read them.  Their signatures are taken
  from the type stub shipped beside the extension, ``nativemem/_core.pyi`` (the text mypy checks
  against), so the reference shows ``malloc(size: int, /) -> Buffer``, not ``malloc()``.  Sphinx 9
  gives no public hook for a signature it could not read (``autodoc-process-signature`` then
  fails), so autodoc's ``_get_signature_object`` is wrapped; older Sphinx uses the event.  The
  docstrings' opening "malloc(size) -> Buffer: ..." is trimmed to the text after the colon, and a
  ``nativemem._core`` base class is named in full.
* ``env-check-consistency``: every name in ``nativemem.__all__`` must be documented somewhere
  (``.. autoclass::``, ``.. autofunction::``, ...); a missing one is a warning, so the ``-W`` build
  fails.  docs/check_api_coverage.py makes the same check without Sphinx.
* ``.. nativemem-cli-help:: [COMMAND]``: the ``--help`` text of ``python -m nativemem [COMMAND]``.
"""
from __future__ import annotations

import __future__
import ast
import contextlib
import inspect
import io
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

_STUB_SIGS: Optional[Dict[Tuple[str, str], inspect.Signature]] = None


def _stub_signatures() -> Dict[Tuple[str, str], inspect.Signature]:
    """(class name, method name) -> the method's Signature (without self) from nativemem/_core.pyi.

    Each stub ``def`` is re-created as an empty function under ``from __future__ import
    annotations`` (annotations stay the stub's text) and read back with ``inspect.signature``."""
    global _STUB_SIGS
    if _STUB_SIGS is None:
        import nativemem
        path = os.path.join(os.path.dirname(nativemem.__file__), "_core.pyi")
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        sigs: Dict[Tuple[str, str], inspect.Signature] = {}
        for cls in tree.body:
            if not isinstance(cls, ast.ClassDef):
                continue
            for fn in cls.body:
                if not isinstance(fn, ast.FunctionDef):
                    continue
                if any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list):
                    continue
                args = fn.args
                if args.posonlyargs and args.posonlyargs[0].arg in ("self", "cls"):
                    args.posonlyargs = args.posonlyargs[1:]
                elif args.args and args.args[0].arg in ("self", "cls"):
                    args.args = args.args[1:]
                ret = f" -> {ast.unparse(fn.returns)}" if fn.returns is not None else ""
                src = f"def {fn.name}({ast.unparse(args)}){ret}: ...\n"
                ns: Dict[str, Any] = {}
                exec(compile(src, path, "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True), ns)
                sigs[(cls.name, fn.name)] = inspect.signature(ns[fn.name])
        _STUB_SIGS = sigs
    return _STUB_SIGS


def _c_method_signature(obj: Any) -> Optional[inspect.Signature]:
    """The stub's signature for a method of a nativemem._core type that states none itself."""
    from nativemem import _core
    owner = getattr(obj, "__objclass__", None)
    # the C types' tp_name is "nativemem.Buffer" or "nativemem._core.Allocator": find them in _core
    if not isinstance(owner, type) or getattr(_core, owner.__name__, None) is not owner:
        return None
    if getattr(obj, "__text_signature__", None):
        return None  # the C docstring carries its own signature: autodoc reads it
    name = getattr(obj, "__name__", "?")
    sig = _stub_signatures().get((owner.__name__, name))
    if sig is None:
        logger.warning("no signature for the C method nativemem._core.%s.%s: add it to nativemem/_core.pyi",
                       owner.__name__, name, type="nativemem", subtype="c-signature")
    return sig


def _install_signature_patch() -> bool:
    """Sphinx >= 9: autodoc asks _get_signature_object for a method's Signature (None when
    inspect.signature cannot read it, as for these C methods); answer from the stub first."""
    try:
        from sphinx.ext.autodoc._dynamic import _signatures
    except ImportError:
        return False
    original = getattr(_signatures, "_get_signature_object", None)
    if original is None:
        return False
    if getattr(original, "_nativemem", False):
        return True

    def _get_signature_object(*args: Any, **kwargs: Any) -> Any:
        props = kwargs.get("props")
        if props is not None and props.obj_type == "method":
            sig = _c_method_signature(props._obj)
            if sig is not None:
                return sig
        return original(*args, **kwargs)

    _get_signature_object._nativemem = True  # type: ignore[attr-defined]
    _signatures._get_signature_object = _get_signature_object
    return True


_PATCHED = False


def process_signature(app: Any, what: str, name: str, obj: Any, options: Any, signature: Optional[str],
                      return_annotation: Optional[str]) -> Optional[Tuple[str, Optional[str]]]:
    """Sphinx < 9: the same answer through the public event (signature is None when unreadable)."""
    if _PATCHED or what != "method" or signature is not None:
        return None
    sig = _c_method_signature(obj)
    if sig is None:
        return None
    ret = sig.return_annotation
    return (str(sig.replace(return_annotation=inspect.Signature.empty)),
            None if ret is inspect.Signature.empty else str(ret))


def process_docstring(app: Any, what: str, name: str, obj: Any, options: Any, lines: List[str]) -> None:
    """A C method's docstring opens with its call, "malloc(size) -> Buffer: what it does": once
    the signature line shows the call (from the stub), keep only "What it does"."""
    sig = _c_method_signature(obj) if what == "method" and lines else None
    if sig is None:
        return
    short = name.rsplit(".", 1)[-1]
    m = re.match(rf"{re.escape(short)}\(.*?\)(?:\s*->\s*[^:]+)?:\s+(\S.*)$", lines[0])
    if m:
        rest = m.group(1)
        first = re.match(r"\w*", rest).group(0)  # type: ignore[union-attr]
        lines[0] = rest if first in sig.parameters else rest[0].upper() + rest[1:]  # "n addresses" stays


def process_bases(app: Any, name: str, obj: Any, options: Any, bases: list) -> None:
    """A base that is a C extension type of nativemem._core is named in full ("Bases: Allocator"
    under nativemem.Allocator would name the class itself)."""
    from nativemem import _core
    for i, base in enumerate(bases):
        if isinstance(base, type) and getattr(_core, base.__name__, None) is base:
            bases[i] = f"``nativemem._core.{base.__name__}`` (C extension type)"


def check_api_coverage(app: Any, env: Any) -> None:
    import nativemem
    documented = set(env.get_domain("py").objects)
    for name in nativemem.__all__:
        if f"nativemem.{name}" not in documented:
            logger.warning("nativemem.%s (in nativemem.__all__) is not in the API reference: add an "
                           "auto* directive for it under docs/", name, type="nativemem", subtype="coverage")


class CliHelp(SphinxDirective):
    """The ``--help`` output of ``python -m nativemem [COMMAND]`` as a literal block."""
    optional_arguments = 1
    has_content = False
    option_spec = {"width": directives.positive_int}

    def run(self) -> list:
        from nativemem.__main__ import main
        argv = list(self.arguments) + ["--help"]
        out = io.StringIO()
        # argparse wraps to COLUMNS; Python 3.14's argparse colours help unless told not to
        env = {"COLUMNS": str(self.options.get("width", 100)), "NO_COLOR": "1", "PYTHON_COLORS": "0",
               "FORCE_COLOR": None}
        saved = {k: os.environ.get(k) for k in env}
        try:
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                try:
                    main(argv)
                except SystemExit:
                    pass
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        text = out.getvalue().rstrip()
        if not text:
            logger.warning("python -m nativemem %s printed no help", " ".join(argv), location=self.get_location())
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app: Any) -> Dict[str, Any]:
    global _PATCHED
    _PATCHED = _install_signature_patch()
    app.connect("autodoc-process-signature", process_signature)
    app.connect("autodoc-process-bases", process_bases)
    app.connect("autodoc-process-docstring", process_docstring)
    app.connect("env-check-consistency", check_api_coverage)
    app.add_directive("nativemem-cli-help", CliHelp)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
