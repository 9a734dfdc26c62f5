"""JAX's persistent compilation cache, turned on once per process for training and prediction.

Every process that trains a network (:func:`~xfusion.models.train.train_and_evaluate`) or runs a
spatial model (this one, or each worker of a ``distributed`` cluster) calls
:func:`enable_compilation_cache` first, so a compiled training step or network is reused across
processes and runs instead of being compiled again: a second run of the same recipe skips
XLA's compilation (a few seconds per program on a CPU).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

__all__ = ["enable_compilation_cache"]

_lock = threading.Lock()
_enabled = False


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache (once per process) and return its folder.

    The folder is ``path``, else ``$XFUSION_JAX_CACHE``, else ``~/.cache/xfusion/jax``. A cache
    folder already configured (``JAX_COMPILATION_CACHE_DIR``) is kept.
    :func:`xfusion.models.predict.predict` calls this in every process that runs a spatial
    model, so workers reuse compiled programs. Where the folder cannot be created or written (a
    read-only home, a batch job without one), the cache stays off and ``None`` is returned: JAX
    would otherwise warn on every compilation.

    Examples
    --------
    >>> folder = enable_compilation_cache()
    >>> folder is None or isinstance(folder, str)
    True
    """
    global _enabled
    import jax

    with _lock:
        current = jax.config.jax_compilation_cache_dir
        if _enabled or current:
            _enabled = True
            return current
        try:
            folder = path or os.environ.get("XFUSION_JAX_CACHE")
            folder = folder or Path.home() / ".cache" / "xfusion" / "jax"
            Path(folder).mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()  # it exists; can JAX write there?
        except (OSError, RuntimeError):  # read-only or no home: run without a persistent cache
            _enabled = True
            return None
        jax.config.update("jax_compilation_cache_dir", str(folder))
        _enabled = True
        return str(folder)
