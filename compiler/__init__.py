"""tilert_compiler: a decoder LLM description in, one persistent CUDA kernel out.

    import tilert_compiler as tc
    cm = tc.compile("llama-3.2-1b")       # model.yaml path, dict, HF folder, or bundled name
    cm.ir("tile"); cm.source; cm.save("out/"); cm.interpret([1, 2, 3])
    m = tc.runtime.load("out/")           # the kernel on a GPU, else device="cpu": interpreter
    m.generate("Once upon a time", 32)    # text or ids; m.chat([{"role": "user", ...}])

Imports are lazy: `tilert_compiler.runtime` loads on a serving box without pulling in the
compiler (passes, codegen, jinja2).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "compile": ("tilert_compiler.driver", "compile"),
    "CompiledModel": ("tilert_compiler.driver", "CompiledModel"),
    "Options": ("tilert_compiler.options", "Options"),
    "load_config": ("tilert_compiler.models.config", "load_config"),
    "ConfigError": ("tilert_compiler.models.text", "ConfigError"),
}
_SUBPACKAGES = ("runtime", "models", "ir", "passes", "codegen")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"tilert_compiler.{name}")
    raise AttributeError(f"module 'tilert_compiler' has no attribute '{name}'")


__all__ = ["__version__", *_LAZY, *_SUBPACKAGES]


def __dir__() -> list[str]:
    """The public API (the lazy names too) and the module's dunders, for dir() and
    completion; not the helpers this file imports."""
    return sorted({*__all__, *(n for n in globals() if n.startswith("__"))})
