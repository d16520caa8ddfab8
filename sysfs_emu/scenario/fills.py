"""What pages hold: the registry of fills, and the content ids they become.

A page's content is an integer id: equal ids are identical 4 KiB pages. A
fill is one entry of :data:`REGISTRY`: its name, the keys it takes besides
``fill``, how it reads them (with the scenario's messages), how it makes the
ids of a run of pages, and, when its ids are bounded, how a page range is
checked against the bound. Adding a fill is adding one entry; the region and
``rewrite`` keys, the "must be one of" messages and docs/scenario-format.md's
list follow from it (the docs by hand).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from sysfs_emu.scenario.checks import Checker, join, show

__all__ = ["Fill", "FillKind", "REGISTRY", "FILLS", "FILL_KEYS", "MAX_POOL_ENTRY", "parse_fill", "span_error",
           "ContentIds", "captured_array", "CapturedIdsError"]

MAX_POOL_ENTRY = 1 << 30  # pool entries (and so distinct contents) stay well inside 31-bit ids
MAX_CAPTURED_ID = 1 << 30  # likewise the ids of a capture's content id file


@dataclass(frozen=True, init=False, repr=False)
class Fill:
    """A fill kind and its parameters: ``Fill("zero")``, ``Fill("same", tag="t")``, ``Fill("pool", pool="p")``.

    Parameters read as attributes (``fill.tag``, ``fill.pool``, ``fill.offset``);
    those left out take the kind's defaults.
    """

    kind: str
    params: tuple[tuple[str, Any], ...]

    def __init__(self, kind: str, **params: Any) -> None:
        spec = REGISTRY.get(kind)
        if spec is None:
            raise ValueError(f"no fill {kind!r} (one of: {', '.join(FILLS)})")
        unknown = sorted(set(params) - set(spec.keys))
        if unknown:
            raise TypeError(f"fill {kind} takes no {', '.join(unknown)}")
        values = {**spec.defaults, **params}
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "params", tuple((k, values[k]) for k in spec.keys if k in values))

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: the fill's parameters.
        for key, value in self.__dict__.get("params", ()):
            if key == name:
                return value
        raise AttributeError(f"fill {self.__dict__.get('kind')!r} has no {name!r}")

    def __repr__(self) -> str:
        return "Fill(" + ", ".join([repr(self.kind)] + [f"{k}={v!r}" for k, v in self.params]) + ")"


@dataclass(frozen=True)
class FillKind:
    """One fill: ``parse`` reads its keys from a region or rewrite mapping, ``contents`` makes page ids.

    ``span`` (optional) checks a page range against the fill's own bounds:
    ``span(fill, first, pages)`` with ``first`` None for a whole region, and
    answers None or (key, message).
    """

    name: str
    keys: tuple[str, ...]
    parse: Callable[[Checker, dict, str], dict[str, Any]]
    contents: Callable[["ContentIds", Fill, int, int], np.ndarray]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    span: Callable[[Fill, int | None, int], tuple[str, str] | None] | None = None


# ---- the fills ---------------------------------------------------------------------------


def _no_keys(c: Checker, raw: dict, where: str) -> dict[str, Any]:
    return {}


def _zero_contents(ids: "ContentIds", fill: Fill, first: int, count: int) -> np.ndarray:
    return np.zeros(count, dtype=np.int64)


def _unique_contents(ids: "ContentIds", fill: Fill, first: int, count: int) -> np.ndarray:
    return ids.fresh(count)


def _same_parse(c: Checker, raw: dict, where: str) -> dict[str, Any]:
    return {"tag": c.name(raw, "tag", where, "fill: same needs the content's tag")}


def _same_contents(ids: "ContentIds", fill: Fill, first: int, count: int) -> np.ndarray:
    return np.full(count, ids.tag_id(fill.tag), dtype=np.int64)


def _pool_parse(c: Checker, raw: dict, where: str) -> dict[str, Any]:
    pool = c.name(raw, "pool", where, "fill: pool needs the pool's name")
    offset = c.integer(raw.get("offset", 0), join(where, "offset"), minimum=0, maximum=MAX_POOL_ENTRY)
    return {"pool": pool, "offset": offset}


def _pool_contents(ids: "ContentIds", fill: Fill, first: int, count: int) -> np.ndarray:
    return ids.pool_ids(fill.pool, fill.offset + first, count)


def _pool_span(fill: Fill, first: int | None, pages: int) -> tuple[str, str] | None:
    if fill.offset + (first or 0) + pages <= MAX_POOL_ENTRY:
        return None
    terms = "offset + pages" if first is None else "offset + first + pages"
    return "offset", f"{terms} must be <= {MAX_POOL_ENTRY}"


def _captured_parse(c: Checker, raw: dict, where: str) -> dict[str, Any]:
    name = c.name(raw, "ids", where, "fill: captured needs the content id file that sysfs-emu capture wrote")
    path = Path(name)
    if not path.is_absolute():
        # beside the scenario file, as capture writes it (a scenario given as a mapping: the working directory)
        source = Path(c.source)
        path = (source.parent if source.is_file() else Path.cwd()) / path
    try:
        captured_array(str(path))
    except CapturedIdsError as exc:
        raise c.fail(join(where, "ids"), str(exc)) from None
    index = c.integer(raw.get("index", 0), join(where, "index"), minimum=0)
    return {"ids": str(path), "index": index}


def _captured_contents(ids: "ContentIds", fill: Fill, first: int, count: int) -> np.ndarray:
    return ids.captured(fill.ids, fill.index + first, count)


def _captured_span(fill: Fill, first: int | None, pages: int) -> tuple[str, str] | None:
    length = len(captured_array(fill.ids))
    if fill.index + (first or 0) + pages <= length:
        return None
    terms = "index + pages" if first is None else "index + first + pages"
    return "index", f"{terms} must be <= {length}, the content ids in {fill.ids}"


# In the order messages list them.
REGISTRY: Mapping[str, FillKind] = {
    kind.name: kind
    for kind in (
        # every page identical: one id per tag, the same wherever the tag is used
        FillKind("same", ("tag",), _same_parse, _same_contents),
        # page i holds entry i + offset of the pool: the same content in every process
        FillKind("pool", ("pool", "offset"), _pool_parse, _pool_contents, {"offset": 0}, _pool_span),
        # contents found nowhere else
        FillKind("unique", (), _no_keys, _unique_contents),
        # empty pages
        FillKind("zero", (), _no_keys, _zero_contents),
        # the pages sysfs-emu capture read: entry i + index of a content id file (0: an empty page; equal
        # ids: equal pages, within the file)
        FillKind("captured", ("ids", "index"), _captured_parse, _captured_contents, {"index": 0}, _captured_span),
    )
}
FILLS = tuple(REGISTRY)
# The keys of all fills besides ``fill`` itself, each once, in registry order.
FILL_KEYS = tuple(dict.fromkeys(key for kind in REGISTRY.values() for key in kind.keys))


def parse_fill(c: Checker, raw: dict, where: str) -> Fill:
    """The ``fill`` of a region or rewrite mapping and the keys that go with it."""
    if "fill" not in raw:
        raise c.fail(join(where, "fill"), f"missing (one of: {', '.join(FILLS)})")
    kind = raw["fill"]
    if kind not in FILLS:  # a tuple: any value, hashable or not, can be looked up
        raise c.fail(join(where, "fill"), f"must be one of {', '.join(FILLS)}, got {show(kind)}")
    spec = REGISTRY[kind]
    for key in FILL_KEYS:
        if key in raw and key not in spec.keys:
            owners = " or ".join(k.name for k in REGISTRY.values() if key in k.keys)
            raise c.fail(join(where, key), f"only goes with fill: {owners}")
    return Fill(kind, **spec.parse(c, raw, where))


def span_error(fill: Fill, first: int | None, pages: int) -> tuple[str, str] | None:
    """None when ``pages`` pages from ``first`` (None: a whole region) fit the fill's bounds, else (key, message)."""
    span = REGISTRY[fill.kind].span
    return span(fill, first, pages) if span is not None else None


class CapturedIdsError(ValueError):
    """A content id file that cannot be used; the message names it and says why."""


@functools.lru_cache(maxsize=16)
def _load_captured(path: str, stamp: tuple[int, int]) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise CapturedIdsError(f"no such file {path}") from None
    except (OSError, ValueError) as exc:
        raise CapturedIdsError(f"{path} is not a content id file (a .npy array of page ids): {exc}") from None
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise CapturedIdsError(f"{path} is not a content id file: it must hold one row of whole numbers, "
                               f"not {arr.dtype} of shape {arr.shape}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= MAX_CAPTURED_ID):
        raise CapturedIdsError(f"{path}: content ids must be from 0 to {MAX_CAPTURED_ID - 1}")
    return arr


def captured_array(path: str) -> np.ndarray:
    """The content ids in a capture's .npy file (memory-mapped, checked once per version of the file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CapturedIdsError(f"no such file {path}") from None
    except OSError as exc:
        raise CapturedIdsError(f"cannot read {path}: {exc.strerror}") from None
    return _load_captured(path, (st.st_mtime_ns, st.st_size))


class ContentIds:
    """Content ids for page fills (equal id = identical 4 KiB page), allocated compactly.

    - 0 is the zero page;
    - a tag has one id, the same wherever the tag is used;
    - entry k of pool P has one id, so page i of a region filled from P with
      ``offset`` o holds entry ``i + o``, identical in every process;
    - :meth:`fresh` ids are handed out once and never again.

    Fresh ids come from ``new_ids(n)`` (the memory model's allocator, so ids stay
    small and dense); without one, a private counter from 1 is used.
    """

    def __init__(self, new_ids: Callable[[int], np.ndarray] | None = None) -> None:
        self._new_ids = new_ids or self._counter
        self._next = 1
        self._tags: dict[str, int] = {}
        self._pools: dict[str, np.ndarray] = {}  # entry -> id, -1 where not used yet
        self._captured: dict[str, int] = {}  # content id file -> the id its content 1 became

    def _counter(self, n: int) -> np.ndarray:
        ids = np.arange(self._next, self._next + n, dtype=np.int64)
        self._next += n
        return ids

    def fresh(self, count: int) -> np.ndarray:
        """``count`` ids never handed out before."""
        return np.asarray(self._new_ids(count), dtype=np.int64)

    def tag_id(self, tag: str) -> int:
        if tag not in self._tags:
            self._tags[tag] = int(self._new_ids(1)[0])
        return self._tags[tag]

    def pool_ids(self, pool: str, first_entry: int, count: int) -> np.ndarray:
        """Ids of entries ``first_entry .. first_entry + count - 1`` of a pool."""
        table = self._pools.get(pool, np.zeros(0, dtype=np.int64))
        stop = first_entry + count
        if stop > len(table):
            grown = np.full(max(stop, len(table) * 5 // 4), -1, dtype=np.int64)
            grown[: len(table)] = table
            table = grown
            self._pools[pool] = table
        ids = table[first_entry:stop]
        missing = ids < 0
        n = int(missing.sum())
        if n:
            ids[missing] = self._new_ids(n)
        return ids.copy()

    def captured(self, path: str, first: int, count: int) -> np.ndarray:
        """Ids of entries ``first .. first + count - 1`` of a capture's content id file.

        The file's ids 1..N take one block of N fresh ids the first time the file is
        used (0 stays the empty page), so equal ids within the file stay equal and
        match nothing else.
        """
        arr = captured_array(path)
        base = self._captured.get(path)
        if base is None:
            n = int(arr.max()) if arr.size else 0
            block = self.fresh(n) if n else np.zeros(0, dtype=np.int64)
            if n and int(block[-1]) - int(block[0]) != n - 1:  # pragma: no cover - both allocators count up
                raise CapturedIdsError("fresh content ids did not come as one block")
            base = self._captured[path] = int(block[0]) if n else 0
        ids = np.asarray(arr[first:first + count], dtype=np.int64)
        return np.where(ids == 0, 0, ids + (base - 1))

    def contents(self, fill: Fill, first: int, count: int) -> np.ndarray:
        """Ids for ``count`` pages starting at page ``first`` of a region."""
        return REGISTRY[fill.kind].contents(self, fill, first, count)
