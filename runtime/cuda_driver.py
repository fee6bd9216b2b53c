"""The CUDA driver API's results, for the decode kernel's loader (runtime/gpu.py) and the
prefill program's (runtime/prefill.py): cuda-bindings returns (CUresult, values...), and a
call that failed becomes one RuntimeError naming what was being done."""

from __future__ import annotations

from typing import Any


def checked(result: Any, what: str) -> Any:
    """The values a driver call returned (one, or a list of several), after its CUresult;
    a failure raises RuntimeError("<what> failed: <the error's name>")."""
    from cuda.bindings import driver  # GPU machines only: imported when a call is made

    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(err)
        raise RuntimeError(f"{what} failed: {name.decode() if name else err}")
    return rest[0] if len(rest) == 1 else rest
