"""From page hashes to compact content ids: 0 for an empty page, 1..D for the D distinct contents read.

Without sampling every captured page was read: equal hashes get equal ids, numbered
in the order of the hash values (which say nothing, the key being gone).

With ``--sample N`` only the first resident page of each run of N pages of a mapping
was read (its sample); each other resident page of the run is inferred from it, on
the assumption that memory is laid out alike wherever the sample's content is (guest
images at the same guest-physical addresses, runs of one content):

- the sample itself has its own id;
- a neighbour of an empty sample is empty;
- a neighbour of a sample whose content the next or the previous run's sample
  repeats (a run of one content, such as a filled buffer) has that content too;
- any other neighbour ``j`` pages after a sample of content ``c`` gets content
  ``(c, j)``: the same for every page ``j`` pages after a sample of ``c``, wherever
  that is, so pages shared by several guests at the same place stay shared and
  unique pages stay unique.

Estimates are therefore exact for sharing at the same offsets in their mappings and
for long runs of one content; pages equal only at unrelated places are undercounted.
"""

from __future__ import annotations

import numpy as np

from sysfs_emu.capture.pages import EMPTY, MappingPages


def assign_ids(parts: list[MappingPages], sample: int) -> np.ndarray:
    """The content ids of every captured page of ``parts``, in order (int32)."""
    hashes = _all_hashes(parts)
    sid, distinct = ranks(hashes)
    del hashes
    if sample == 1:
        return sid
    return _spread(parts, sid, distinct, sample).astype(np.int32)


def _all_hashes(parts: list[MappingPages]) -> np.ndarray:
    """The samples' hashes of every part in one array; the parts let go of theirs."""
    out = np.empty(sum(p.samples for p in parts), dtype=np.uint64)
    at = 0
    for p in parts:
        for chunk in p.sample_hash:
            out[at:at + chunk.size] = chunk
            at += chunk.size
        p.sample_hash = []
    return out


def ranks(hashes: np.ndarray) -> tuple[np.ndarray, int]:
    """(id of each hash, number of distinct ones): EMPTY is 0, the others 1.. in the order of their values.

    Sorted once, with a few bytes per page beside the hashes (about 24), not np.unique's copies.
    """
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    new = np.empty(ordered.size, dtype=bool)
    if ordered.size:
        new[0] = ordered[0] != EMPTY
        np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    del ordered
    ids = np.empty(hashes.size, dtype=np.int32)
    ids[order] = np.cumsum(new, dtype=np.int32)
    return ids, int(ids.max()) if ids.size else 0


def _spread(parts: list[MappingPages], sid: np.ndarray, distinct: int, sample: int) -> np.ndarray:
    """Each page's id from its sample's (the rules in the module's doc)."""
    out = []
    base = 0
    for part in parts:
        n = part.samples
        own = sid[base:base + n]
        block = part.concat("sample_block", np.int64)
        # the next run's sample, or the previous run's, has this one's content: a run of one content
        repeats = np.zeros(n, dtype=bool)
        if n > 1:
            same = (own[1:] == own[:-1]) & (block[1:] == block[:-1] + 1)
            repeats[:-1] |= same
            repeats[1:] |= same
        page_sample = part.concat("page_sample", np.int64)
        j = part.concat("page_offset", np.int64)
        c = own[page_sample]
        inherit = (j == 0) | (c == 0) | repeats[page_sample]
        out.append(np.where(inherit, c, distinct + (c - 1) * (sample - 1) + j))
        base += n
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
