"""Small matrices run faster on one BLAS thread: a pool of threads costs more than it saves
for a 150x150 Cholesky, and on a busy coordinator host it fights the other processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def one_blas_thread() -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it BLAS keeps its own setting
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
