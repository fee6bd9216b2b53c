"""Reading what users hand in: model descriptions, HF configs, safetensors indexes,
tokenizers and IR dumps, each file read with limits and every problem one `ConfigError` line
that names the file (`error=` picks another class for callers outside the models). Values and
paths are shown short and on one line, whatever they hold.
"""

from __future__ import annotations

import codecs
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import yaml

# Text inputs: a description is a few KB (the largest HF config.json of a supported family
# is under 10 KB), so these only stop a wrong file or a crafted one: a multi-gigabyte read,
# a YAML alias bomb (1 KB that expands to billions of values), nesting that overflows the
# parser's stack.
MAX_DESCRIPTION_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_VALUES = 100_000  # values in a parsed description, aliases expanded
SHOWN_CHARS = 60  # at most this much of a value or a path is quoted in a message


class ConfigError(ValueError):
    """One-line, user-facing: names the field and what is allowed."""


class ConfigTypeError(ConfigError, TypeError):
    """A Python API argument of the wrong type (`tc.compile(42)`): a ConfigError, so it
    carries the CLI's one-line message, and a TypeError, so it reads like one."""


def show_path(path: str | os.PathLike[str]) -> str:
    """A path for a message: one line, and at most ~200 characters (the start and the
    file name of a longer one)."""
    text = _printable(os.fspath(path) if not isinstance(path, str) else path)
    return text if len(text) <= 200 else f"{text[:120]}...{text[-60:]}"


def path_kind(path: Path, error: type[Exception] = ConfigError) -> str | None:
    """What is at `path`: "file", "dir", "other" (a device, a pipe) or None (nothing). A
    path the OS will not look at (a name over 255 characters, a NUL byte, no permission)
    is one `error` line."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise error(f"{show_path(path)}: cannot look at it ({why})") from None
    return "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"


def read_text(
    path: str | os.PathLike[str],
    what: str = "model description",
    *,
    limit: int = MAX_DESCRIPTION_BYTES,
    error: type[Exception] = ConfigError,
) -> str:
    """The UTF-8 text of a file the tool reads (a description, a config.json, an index, a
    tokenizer, an IR dump). Every way it can fail is one `error` line naming the file:
    missing, unreadable, a folder, longer than `limit` bytes, binary, or not UTF-8."""
    shown = show_path(path)
    if path_kind(Path(path), error) == "other":  # a pipe would block the read
        raise error(f"{shown}: not a regular file, not a {what}")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except IsADirectoryError:
        raise error(f"{shown}: is a folder, not a {what}") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        why = getattr(e, "strerror", None) or str(e)
        raise error(f"{shown}: cannot read ({why})") from None
    if len(data) > limit:
        raise error(
            f"{shown}: more than {_bytes(limit)}; too large for a {what} (a different file?)"
        )
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise error(f"{shown}: is UTF-16 text; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")  # an editor's BOM is harmless
    except UnicodeDecodeError as e:
        kind = "a binary file" if b"\0" in data else "another encoding (latin-1?)"
        raise error(
            f"{shown}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}): "
            f"{kind}, not a {what}; save it as UTF-8"
        ) from None
    if "\0" in text:
        raise error(f"{shown}: holds NUL bytes: a binary file (or UTF-16 text), not a {what}")
    return text


def parse_json(text: str, origin: str, *, error: type[Exception] = ConfigError) -> Any:
    """JSON with the description limits: nesting depth, value count, duplicate keys."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as e:
        raise error(f"{origin}: not valid JSON: {e.msg} at line {e.lineno}") from None
    except RecursionError:
        raise error(f"{origin}: nested deeper than {MAX_DEPTH} levels") from None
    except _Refused as e:
        raise error(f"{origin}: {e}") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise error(f"{origin}: not valid JSON: {_parse_problem(e)}") from None
    problem = _too_big(data)
    if problem:
        raise error(f"{origin}: {problem}")
    return data


def parse_yaml(text: str, origin: str, *, error: type[Exception] = ConfigError) -> Any:
    """YAML (safe tags only) with the description limits: nesting depth, values with
    aliases expanded (an alias bomb is refused before it is built), duplicate keys."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problem = _too_big_node(node)
        if problem:
            raise _Refused(problem)
        return loader.construct_document(node)
    except _Refused as e:
        raise error(f"{origin}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise error(f"{origin}: not valid YAML: {shorten(problem)}{where}") from None
    except RecursionError:
        raise error(f"{origin}: nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, OverflowError) as e:  # a timestamp like 2024-13-45, a huge integer
        raise error(f"{origin}: not valid YAML: {_parse_problem(e)}") from None
    finally:
        loader.dispose()


def _parse_problem(e: Exception) -> str:
    if "integer string conversion" in str(e):  # Python's guard against quadratic int()
        limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
        return f"an integer of more than {limit} digits"
    return shorten(str(e))


class _Refused(ValueError):
    """A parsed input past a limit (depth, size, a duplicate key)."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"key {show_value(key)} appears twice in one object")
        out[key] = value
    return out


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses nesting past MAX_DEPTH while composing (before recursion
    can overflow) and duplicate keys in one mapping (PyYAML keeps the last silently)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels (line {line})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        seen: set[tuple[str, str]] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in seen:
                    raise _Refused(
                        f"key {show_value(key.value)} appears twice in one mapping "
                        f"(line {key.start_mark.line + 1})"
                    )
                seen.add((key.tag, key.value))
        return super().construct_mapping(node, deep=deep)


def _too_big_node(root: yaml.Node) -> str | None:
    """Why a composed YAML document is refused: more than MAX_VALUES values once aliases
    are expanded, or an alias inside its own anchor; None if it is fine. Each node is
    counted once (memoized), so a bomb costs its size in nodes, not its expansion."""
    size: dict[int, int] = {}
    active: set[int] = set()

    def count(node: yaml.Node) -> int:
        if id(node) in size:
            return size[id(node)]
        if id(node) in active:
            raise _Refused(f"an alias refers to itself (line {node.start_mark.line + 1})")
        active.add(id(node))
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(count(c) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(count(k) + count(v) for k, v in node.value)
        active.discard(id(node))
        size[id(node)] = n
        return n

    n = count(root)
    if n > MAX_VALUES:
        return f"holds {n:.3g} values once its aliases are expanded, more than {MAX_VALUES}"
    return None


def _too_big(data: Any) -> str | None:
    """Why parsed JSON is refused (deeper than MAX_DEPTH, more than MAX_VALUES values)."""
    stack, n = [(data, 1)], 0
    while stack:
        value, depth = stack.pop()
        n += 1
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if n > MAX_VALUES:
            return f"holds more than {MAX_VALUES} values"
        if isinstance(value, dict):
            stack += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]
    return None


def _bytes(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def _printable(text: str) -> str:
    """Control characters and the like escaped, so a message stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shorten(text: str, n: int = SHOWN_CHARS * 2) -> str:
    """`text` on one line (control characters escaped), cut to at most `n` characters."""
    text = " ".join(_printable(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def show_value(value: Any) -> str:
    """A value as the user wrote it, cut short so errors stay one line. Only the shown
    prefix is ever rendered: a huge or self-referencing value costs nothing."""
    parts: list[str] = []
    _render(value, parts, [SHOWN_CHARS + 1], set())
    text = " ".join(_printable("".join(parts)).split())
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _render(value: Any, out: list[str], budget: list[int], seen: set[int]) -> None:
    """Appends the rendering of `value` to `out` until `budget[0]` characters are spent."""
    if budget[0] <= 0:
        return

    def put(text: str) -> None:
        out.append(text[: budget[0]])
        budget[0] -= len(text)

    if value is None:
        put("null")
    elif isinstance(value, bool):
        put(str(value).lower())
    elif isinstance(value, int):
        # str() of an int over 4300 digits raises; such a value is its size, not its digits
        put(repr(value) if value.bit_length() < 1000 else f"<a {value.bit_length()}-bit integer>")
    elif isinstance(value, (float, str)):
        put(repr(value[: budget[0] + 2] if isinstance(value, str) else value))
    elif isinstance(value, (dict, list, tuple)):
        if id(value) in seen:
            put("...")
            return
        seen.add(id(value))
        is_dict = isinstance(value, dict)
        put("{" if is_dict else "[")
        items = value.items() if is_dict else value
        for i, item in enumerate(items):
            if budget[0] <= 0:
                return
            if i:
                put(", ")
            if is_dict:
                _render(item[0], out, budget, seen)
                put(": ")
                item = item[1]
            _render(item, out, budget, seen)
        put("}" if is_dict else "]")
        seen.discard(id(value))
    else:  # another type (a date from YAML, an object through the Python API): its name
        put(f"<{type(value).__name__}>")
