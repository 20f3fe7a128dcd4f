"""Helpers shared by the tests of mamba/."""

from mamba import _kernel


def need(backend):
    """Where a C compiler exists the kernel must build: a failed build fails the
    test here rather than hiding behind a skip (the fallback is tested as "torch")."""
    if backend == "kernel":
        assert _kernel.load() is not None, f"C kernel unavailable: {_kernel.load_error()}"
