"""The C kernel's binding: the ctypes table against the C prototypes and the
built library, strict argument types, and a cache key over every source file."""

import ctypes
import re
import shutil
import subprocess

import pytest
import torch

from mamba import _kernel
from tests.mamba.conftest import need

C_TYPES = {"int64_t": ctypes.c_int64, "int": ctypes.c_int}  # and any pointer -> _kernel.Pointer

# A function definition at file scope: return type, name (maybe SFX(name)),
# parameters, then the opening brace.  Static helpers (static, or
# ALWAYS_INLINE, which is static inline) are skipped by the caller.
DEFINITION = re.compile(
    r"^(?P<head>[A-Za-z_][\w ]*?)\s+(?:SFX\((?P<tname>\w+)\)|(?P<name>\w+))\((?P<params>[^;{]*?)\)\s*\{",
    re.M,
)


def _strip_comments(text):
    return re.sub(r"/\*.*?\*/|//[^\n]*", " ", text, flags=re.S)


def _ctype(param):
    """ctypes type of one C parameter: `const real *u` -> Pointer, `int64_t L` -> c_int64."""
    decl = " ".join(param.split())
    if "*" in decl:
        return _kernel.Pointer
    ctype = decl.rsplit(" ", 1)[0]
    assert ctype in C_TYPES, f"parameter {decl!r}: no ctypes type for {ctype!r}; extend C_TYPES and _kernel"
    return C_TYPES[ctype]


def prototypes_in_source():
    """{symbol: [ctypes types]} of every non-static function the C sources
    define, with SFX(name) expanded for each dtype _scan_kernel.c instantiates."""
    main = (_kernel._DIR / "_scan_kernel.c").read_text()
    suffixes = re.findall(r"#define SFX\(name\) name##_(\w+)", main)
    assert suffixes == list(_kernel.DTYPE_SUFFIXES)
    found = {}
    for path in _kernel._sources():
        for m in DEFINITION.finditer(_strip_comments(path.read_text())):
            words = m["head"].split()
            if words[0] in ("static", "ALWAYS_INLINE", "typedef"):
                continue
            assert words == ["int"], f"{path.name}: {m.group(0)[:60]!r}: exported kernels return int"
            argtypes = [_ctype(p) for p in m["params"].split(",")]
            names = [f"{m['tname']}_{s}" for s in suffixes] if m["tname"] else [m["name"]]
            for name in names:
                assert name not in found, f"{name} defined twice"
                found[name] = argtypes
    return found


def test_declared_signatures_equal_the_c_prototypes():
    """Same functions, same argument types in the same order, as _declare sets."""
    parsed = prototypes_in_source()
    assert sorted(parsed) == sorted(_kernel.exported())
    for name, argtypes in _kernel.exported().items():
        assert parsed[name] == argtypes, name
    # the parser does read the sources: the scan's backward has 25 parameters
    assert len(parsed["scan_bwd_f64"]) == 25 and parsed["conv_fwd_f32"][1] is ctypes.c_int64


def test_built_library_exports_exactly_the_declared_functions():
    need("kernel")
    lib = _kernel.load()
    nm = shutil.which("nm")
    # binutils (as, ld, nm) come with every C toolchain the kernel builds with (need() above)
    assert nm is not None, "nm (binutils) not on PATH, although a C compiler built the kernel"
    listing = subprocess.run([nm, "-D", "--defined-only", lib._name], capture_output=True, text=True, check=True)
    functions = sorted(line.split()[-1] for line in listing.stdout.splitlines() if line.split()[1:2] == ["T"])
    assert functions == sorted(_kernel.exported())
    for name, argtypes in _kernel.exported().items():
        fn = getattr(lib, name)
        assert (list(fn.argtypes), fn.restype) == (argtypes, ctypes.c_int), name


# what a caller could pass by mistake, for each kind of parameter
WRONG = {
    _kernel.Pointer: ["u", 8, 1.5, b"\0" * 8, torch.zeros(2)],  # a name, a size, raw bytes, a tensor without ptrs()
    ctypes.c_int64: ["8", 8.0, None, ctypes.c_void_p(8)],
    ctypes.c_int: ["1", 1.0, None],
}


@pytest.mark.parametrize("name", sorted(_kernel.exported()))
def test_wrong_argument_type_raises_argument_error_before_the_call(name):
    """Every parameter of every kernel, each wrong value: ctypes.ArgumentError
    naming the argument, raised before C runs.  The valid arguments are NULL
    pointers and zero sizes, a call that does nothing, so a wrong value that
    slipped through would fail the test rather than crash it."""
    need("kernel")
    fn = getattr(_kernel.load(), name)
    valid = [None if t is _kernel.Pointer else 0 for t in fn.argtypes]
    assert fn(*valid) in (0, 1)  # accepted (1 only if calloc(0) returns NULL)
    for i, argtype in enumerate(fn.argtypes):
        for wrong in WRONG[argtype]:
            args = valid[:i] + [wrong] + valid[i + 1:]
            with pytest.raises(ctypes.ArgumentError, match=rf"^argument {i + 1}: TypeError"):
                fn(*args)
    with pytest.raises(TypeError, match=rf"takes at least {len(valid)} arguments"):
        fn(*valid[:-1])


def test_pointer_argument_accepts_what_ptrs_makes():
    x = torch.arange(3.0)
    (p,) = _kernel.ptrs(x)
    assert _kernel.Pointer.from_param(p).value == x.data_ptr()
    assert _kernel.Pointer.from_param(None) is None and _kernel.ptrs(None) == [None]


def copy_sources(tmp_path, monkeypatch):
    for path in _kernel._sources():
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setattr(_kernel, "_DIR", tmp_path)
    return _kernel._sources()


KERNEL_FILES = [p.name for p in _kernel._sources()]


def test_cache_key_changes_when_any_kernel_file_changes(tmp_path, monkeypatch):
    assert set(KERNEL_FILES) >= {"_scan_kernel.c", "_kernel_dtype.h", "_kernel_scan.h", "_kernel_conv.h"}
    copies = copy_sources(tmp_path, monkeypatch)
    key = lambda cc="cc", flags=("-O3",), cpu="x86": _kernel._cache_key(cc, list(flags), cpu, _kernel._sources())  # noqa: E731
    base = key()
    keys = {base}
    for path in copies:
        original = path.read_bytes()
        path.write_bytes(original.replace(b"*/", b" (edited) */", 1))
        keys.add(key())
        path.write_bytes(original)
        assert key() == base  # the key is a function of the contents
    assert len(keys) == len(copies) + 1
    assert len({key(cc="clang"), key(flags=("-O2",)), key(cpu="arm"), base}) == 4
    (tmp_path / "_kernel_extra.h").write_text("/* a new header */\n")
    assert key() not in keys


@pytest.mark.parametrize("name", KERNEL_FILES)
def test_build_reads_every_kernel_file(name, tmp_path, monkeypatch):
    """The build compiles the files the key hashed: an #error in any of them fails it."""
    need("kernel")  # the test suite needs a C compiler, as every kernel test does
    cc = _kernel._compiler()
    copies = {p.name: p for p in copy_sources(tmp_path, monkeypatch)}
    copies[name].write_text(copies[name].read_text() + f"\n#error edited {name}\n")
    err = _kernel._build(cc, ["-O0"], tmp_path / "out" / "k.so")
    assert err is not None and f"edited {name}" in err


def test_every_include_names_a_kernel_file():
    """Quoted includes resolve to files the key and package-data cover."""
    names = {p.name for p in _kernel._sources()}
    included = set()
    for path in _kernel._sources():
        included.update(re.findall(r'^#include "([^"]+)"', path.read_text(), flags=re.M))
    assert included == names - {"_scan_kernel.c"}
