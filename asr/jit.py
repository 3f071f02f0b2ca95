"""Compiling a Python loop to machine code with numba, cached on disk: for the searches whose
inner loops torch ops cannot express cheaply (the CPU beam search, the CPU forced aligner)."""

from __future__ import annotations


def njit(fn=None, **options):
    """numba.njit(cache=True, nogil=True, **options), as a decorator with or without options.
    The machine code is cached next to the module (else in the user's cache folder, or
    NUMBA_CACHE_DIR); where numba finds no writable place for it (a read-only install and home),
    it raises at decoration, and the function is compiled once per process instead."""
    import numba

    if fn is None:
        return lambda f: njit(f, **options)
    try:
        return numba.njit(cache=True, nogil=True, **options)(fn)
    except RuntimeError:
        return numba.njit(nogil=True, **options)(fn)
