"""Programs traced once: a cell's jitted functions kept, traced and lowered, beside the compile
cache, so that a later run of the same cell skips Python's tracing too (``jax.export``).

JAX's persistent compilation cache keeps compiled executables, but every cell still traces its
programs (Python running the model, diffrax's loop and its adjoint: 2-3 s a diffrax training
step on the 2-core CPU, most of what a warm cell's first step costs). With the compile cache on
(``BENCH_COMPILE_CACHE``, :mod:`bench.frameworks.jax._cache`), :func:`jit` exports each program
at its first call (``jax.export``: the traced, lowered StableHLO module) into
``DIR/jax-programs`` and runs it from there; a later cell with the same key loads it instead of
tracing. Cold and warm run the same module (the export), so the compile cache serves both.

A program's key is everything it depends on:

- the cell's scope (:func:`set_scope`, from the engine through :meth:`JaxBackend.program_scope`):
  the cell's identity (suite, budget, seed, options, device, the backend's configuration) and a
  fingerprint of the code (the harness's source and the suite's and backend's packages) and the
  libraries' versions, so that an edit or an upgrade never loads an old program;
- the program's name (given by its caller: two programs of one cell never share it) and its
  function's module, qualified name and first line;
- its arguments' tree structure, shapes, dtypes and weak types, the donated arguments, the
  platform and JAX's default float (float64 inside an ``enable_x64`` context).

Without a scope (a task driven outside the engine), with the cache off, or when anything about
exporting fails (a program with a host callback, a structure the file cannot describe, a missing
``flatbuffers``), the program is jitted as usual: this is an optimisation, never a source of
errors. Files are written whole (a temporary file renamed into place) in a folder of this user's
that is not a link, read without following links, and hold no pickle: a JSON header (the output
structure) and the exported module's bytes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: The programs' subfolder of the compile cache's folder.
SUBFOLDER = "jax-programs"
#: The first bytes of a program file (its format's version).
MAGIC = b"bench-jax-program-2\n"

_STATE: dict[str, Any] = {"scope": None}
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
#: [programs asked for through the cache, programs loaded] in this process.
_COUNTS = [0, 0]


def set_scope(scope: str | None) -> None:
    """The cell's scope: the text every program key of this process starts with (None: no
    program is kept)."""
    _STATE["scope"] = scope


def counts() -> tuple[int, int] | None:
    """``(programs asked for, programs loaded)`` so far in this process; None when programs are
    not kept (no scope or the compile cache off)."""
    return None if _folder() is None else (_COUNTS[0], _COUNTS[1])


def _folder() -> Path | None:
    from bench.frameworks.jax import _cache

    jax_folder = _cache.folder()
    if _STATE["scope"] is None or jax_folder is None:
        return None
    if _STATE.get("flatbuffers") is None:  # jax.export serialises with it (an undeclared need)
        import importlib.util

        _STATE["flatbuffers"] = importlib.util.find_spec("flatbuffers") is not None
    if not _STATE["flatbuffers"]:
        return None
    return jax_folder.parent / SUBFOLDER


def _aval(x: Any) -> Any:
    """The abstract value of an argument (shape, dtype, weak type)."""
    import jax

    typeof = getattr(jax, "typeof", None)
    if typeof is not None:
        return typeof(x)
    from jax import core  # before jax.typeof (the 0.4 environments of the version claims)

    return getattr(core, "get_aval")(x)  # noqa: B009 - not in jax's type stubs


def _say(message: str) -> None:
    print(f"program cache: {message}", file=sys.stderr, flush=True)


def _key(name: str, fn: Callable[..., Any], leaves: Sequence[Any], treedef: Any,
         donate: tuple[int, ...]) -> str:
    import jax

    code = getattr(fn, "__code__", None)
    avals = [(tuple(a.shape), str(a.dtype), bool(getattr(a, "weak_type", False)))
             for a in map(_aval, leaves)]
    text = json.dumps([_STATE["scope"], name, getattr(fn, "__module__", ""),
                       getattr(fn, "__qualname__", ""),
                       getattr(code, "co_firstlineno", None), str(treedef), avals,
                       list(donate), jax.default_backend(),
                       str(jax.numpy.result_type(float))])  # float64 on (an x64 context)
    # an object's repr in a structure (a module's static activation function) names its
    # address, which differs between processes; the scope fixes the code it can be
    text = _ADDRESS.sub("", text)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _describe_one(treedef: Any, arg_treedefs: list[Any]) -> list[Any] | None:
    same = [i for i, t in enumerate(arg_treedefs) if t == treedef]
    if same:
        return ["arg", same[0]]
    try:
        proto = getattr(treedef, "serialize_using_proto")()  # noqa: B009 - not in the stubs
    except Exception:  # noqa: BLE001 - a custom node: not described, not kept
        return None
    return ["jax", base64.b64encode(proto).decode()]


def _describe(out_treedef: Any, arg_treedefs: list[Any]) -> list[Any] | None:
    """The output structure as JSON: the structure of an argument, one of JAX's own containers
    (serialised by JAX), or a tuple of such; None when none fits (the program is not kept)."""
    import jax

    node = out_treedef.node_data()
    if node is None or node[0] is not tuple:
        whole = _describe_one(out_treedef, arg_treedefs)
        return None if whole is None else ["one", whole]
    items = [_describe_one(c, arg_treedefs) for c in jax.tree_util.treedef_children(out_treedef)]
    return None if any(i is None for i in items) else ["tuple", items]


def _rebuild(recipe: list[Any], arg_treedefs: list[Any]) -> Any:
    import jax

    def one(kind: str, value: Any) -> Any:
        if kind == "arg":
            return arg_treedefs[int(value)]
        return jax.tree_util.PyTreeDef.deserialize_using_proto(
            jax.tree_util.default_registry, base64.b64decode(value))

    if recipe[0] == "one":
        return one(*recipe[1])
    return jax.tree_util.treedef_tuple([one(*item) for item in recipe[1]])


def _read(path: Path) -> tuple[dict[str, Any], bytes] | None:
    from bench.store.files import read_bytes  # a regular file, never through a link

    try:
        data = read_bytes(path)
    except FileNotFoundError:
        return None
    if not data.startswith(MAGIC):
        raise ValueError("not a program file of this version")
    header, _, blob = data[len(MAGIC):].partition(b"\n")
    return json.loads(header), blob


def _write(path: Path, header: dict[str, Any], blob: bytes) -> None:
    from bench.frameworks.jax._cache import folder_problem

    from bench.store.files import atomic_write_bytes

    with contextlib.suppress(FileExistsError):
        os.mkdir(path.parent, 0o700)
    problem = folder_problem(path.parent)  # the compile cache's own check of its folders
    if problem:
        raise OSError(problem)
    atomic_write_bytes(path, MAGIC + json.dumps(header).encode() + b"\n" + blob)


def _exported_call(name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                   donate: tuple[int, ...], folder: Path) -> Callable[..., Any]:
    """``fn`` as a jitted function running its exported module: loaded from ``folder`` when
    its key is there, else traced, exported and written there."""
    import jax
    from jax import export

    leaves, treedef = jax.tree_util.tree_flatten(args)
    arg_treedefs = [jax.tree_util.tree_structure(a) for a in args]
    path = folder / f"{_key(name, fn, leaves, treedef, donate)}.bin"
    _COUNTS[0] += 1
    avals = [_aval(x) for x in leaves]
    loaded = None
    try:
        found = _read(path)
        if found is not None:
            header, blob = found
            exported = export.deserialize(bytearray(blob))
            out_treedef = _rebuild(header["out"], arg_treedefs)
            # what was kept must take these arguments and give as many outputs as described
            if [(tuple(a.shape), str(a.dtype)) for a in exported.in_avals] != \
                    [(tuple(a.shape), str(a.dtype)) for a in avals] or \
                    out_treedef.num_leaves != len(exported.out_avals):
                raise ValueError("its arguments or outputs do not match")
            loaded = exported, out_treedef
    except Exception as exc:  # noqa: BLE001 - an unreadable file is traced and rewritten
        _say(f"{path}: {exc}; tracing it again")
    if loaded is not None:
        exported, out_treedef = loaded
        _COUNTS[1] += 1
    else:
        box: dict[str, Any] = {}

        def flat(*flat_args: Any) -> Any:
            out = fn(*jax.tree_util.tree_unflatten(treedef, flat_args))
            out_leaves, box["treedef"] = jax.tree_util.tree_flatten(out)
            return out_leaves

        specs = [jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type) for a in avals]
        exported = export.export(jax.jit(flat))(*specs)
        out_treedef = box["treedef"]
        recipe = _describe(out_treedef, arg_treedefs)
        if recipe is not None:
            try:
                _write(path, {"name": name, "out": recipe}, bytes(exported.serialize()))
            except OSError as exc:
                _say(f"could not keep {name}: {exc}")

    def call(*call_args: Any) -> Any:
        return jax.tree_util.tree_unflatten(
            out_treedef, exported.call(*jax.tree_util.tree_leaves(call_args)))

    return jax.jit(call, donate_argnums=donate)


def jitted(name: str, fn: Callable[..., Any], args: tuple[Any, ...],
           donate: tuple[int, ...] = ()) -> Any:
    """``jax.jit(fn, donate_argnums=donate)`` for calls with arguments like ``args``: through
    the kept program of this key (loaded, or traced and kept) where programs are kept, else the
    plain jit."""
    import jax

    folder = _folder()
    if folder is not None:
        try:
            return _exported_call(name, fn, args, donate, folder)
        except Exception as exc:  # noqa: BLE001 - never an error: traced as usual
            _say(f"{name} not kept ({type(exc).__name__}: {exc}); traced as usual")
    return jax.jit(fn, donate_argnums=donate)


class TracedOnce:
    """Like ``jax.jit(fn, donate_argnums=...)``, each argument structure and shape kept as a
    program (:func:`jitted`) under ``name`` (unique among the programs of a cell): a later run
    of the same cell loads it instead of tracing ``fn`` again."""

    def __init__(self, fn: Callable[..., Any], name: str, donate_argnums: tuple[int, ...] = ()):
        self.fn, self.name, self.donate_argnums = fn, name, donate_argnums
        self._by_signature: dict[Any, Any] = {}

    def __call__(self, *args: Any) -> Any:
        import jax

        leaves, treedef = jax.tree_util.tree_flatten(args)
        avals = map(_aval, leaves)
        signature = (treedef, tuple((a.shape, a.dtype, getattr(a, "weak_type", False))
                                    for a in avals))
        compiled = self._by_signature.get(signature)
        if compiled is None:
            compiled = jitted(self.name, self.fn, args, self.donate_argnums)
            self._by_signature[signature] = compiled
        return compiled(*args)
