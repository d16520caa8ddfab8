"""Workloads of tests/test_fidelity.py: huge pages, a guest's life cycle, a larger mixed host.

Each is (processes, knobs, plan) as test_fidelity.run_real and run_sim take it:
processes are lists of regions ``{"contents": [ids], "mergeable": bool, "thp": bool}``;
a plan is steps ("scan", n), ("read",), ("rewrite", process, region, first, contents),
("exit", process), ("madvise", process, region, advice), ("knob", name, value), ...
"""

from __future__ import annotations

H = 512  # pages in a huge page


def pool(first: int, n: int) -> list[int]:
    return list(range(1000 + first, 1000 + first + n))


_unique_next = [5_000_000]


def unique(n: int) -> list[int]:
    start = _unique_next[0]
    _unique_next[0] += n
    return list(range(start, start + n))


def scan_and_read(*counts: int) -> list[tuple]:
    plan: list[tuple] = []
    for n in counts:
        plan += [("scan", n), ("read",)]
    return plan


def thp(contents: list[int]) -> dict:
    return {"contents": contents, "thp": True}


def small(contents: list[int], mergeable: bool = True) -> dict:
    return {"contents": contents, "mergeable": mergeable}


# sleep_millisecs 20 lets the test stop ksmd after an exact number of full scans
EVERY_SCAN = {"sleep_millisecs": 20}

THP_WORKLOADS = {
    "thp: all pages shared by two processes": (
        [[thp(pool(0, 2 * H))], [thp(pool(0, 2 * H))]], EVERY_SCAN, scan_and_read(1, 1, 1)),
    "thp: half the pages shared": (
        [[thp(pool(0, 2 * H))], [thp(pool(0, H // 2) + unique(H // 2) + pool(H, H // 2) + unique(H // 2))]],
        EVERY_SCAN, scan_and_read(1, 1, 1)),
    "thp: one of two huge pages shared with 4 KiB pages": (
        [[thp(pool(0, 2 * H))], [small(pool(0, H))]], EVERY_SCAN, scan_and_read(1, 1, 1)),
    "thp: empty huge pages, use_zero_pages 0": (
        [[thp([0] * (2 * H))]], {**EVERY_SCAN, "use_zero_pages": 0}, scan_and_read(1, 1, 1, 1)),
    "thp: empty huge pages, use_zero_pages 1": (
        [[thp([0] * (2 * H))]], {**EVERY_SCAN, "use_zero_pages": 1}, scan_and_read(1, 1, 1, 1)),
    "thp: one content repeated inside a huge page": (
        [[thp([5] * 8 + unique(H - 8))]], EVERY_SCAN, scan_and_read(1, 1, 1)),
    "thp: a few shared pages in an otherwise empty huge page": (
        [[thp(pool(0, 10) + [0] * (H - 10))], [small(pool(0, 10))]], EVERY_SCAN, scan_and_read(1, 1, 1)),
    "thp: guests of huge and 4 KiB pages, chains, a rewrite": (
        [
            [thp(pool(0, 600) + [7] * 200 + unique(224) + [0] * 40), small(unique(60))],
            [thp(pool(100, 700) + [0] * 100 + unique(224)), small(pool(0, 50) + [7] * 30)],
            [small(pool(300, 200) + [7] * 40)],
        ],
        {**EVERY_SCAN, "max_page_sharing": 64, "use_zero_pages": 1},
        scan_and_read(1, 1, 1)
        + [("rewrite", 0, 0, 10, unique(20)), ("rewrite", 1, 0, 0, pool(0, 30)), ("read",)]
        + scan_and_read(1, 2)),
}

HOST_WORKLOADS = {
    "madvise unmergeable, then mergeable again": (
        [[small(pool(0, 100) + [0] * 20), small(pool(100, 50))], [small(pool(0, 150))], [small(pool(0, 100))]],
        {**EVERY_SCAN, "use_zero_pages": 1},
        scan_and_read(2)
        + [("madvise", 0, 0, "unmergeable"), ("read",)] + scan_and_read(1)
        + [("madvise", 1, 0, "unmergeable"), ("read",)] + scan_and_read(1)
        + [("madvise", 0, 0, "mergeable"), ("read",)] + scan_and_read(1, 1)),
    "madvise unmergeable on split huge pages": (
        [[thp(pool(0, 2 * H))], [thp(pool(0, H) + unique(H))]],
        EVERY_SCAN,
        scan_and_read(2) + [("madvise", 1, 0, "unmergeable"), ("read",)] + scan_and_read(1, 1)),
    "one, then two of three sharing processes exit": (
        [[small(pool(0, 400) + [6] * 60)], [small(pool(0, 400) + [6] * 60)], [small(pool(0, 300) + unique(100))]],
        {**EVERY_SCAN, "max_page_sharing": 40},
        scan_and_read(2) + [("exit", 0), ("read",)] + scan_and_read(1, 1)
        + [("exit", 1), ("read",)] + scan_and_read(1, 1)),
    "re-merging after copy-on-write": (
        [[small(pool(0, 500) + [0] * 50)], [small(pool(0, 500))], [small(pool(250, 250))]],
        {**EVERY_SCAN, "max_page_sharing": 100},
        scan_and_read(2)
        # contents that exist as KSM pages (other pool entries, the page's own), unique ones, and empty ones
        + [("rewrite", 0, 0, 0, pool(300, 100)), ("rewrite", 0, 0, 100, pool(100, 50)),
           ("rewrite", 0, 0, 150, unique(50)), ("rewrite", 1, 0, 400, [0] * 50), ("read",)]
        + scan_and_read(1, 1, 1)
        + [("rewrite", 0, 0, 150, pool(150, 50)), ("read",)] + scan_and_read(1, 1)),
    "a larger mixed host: pools, unique, empty, one content beyond max_page_sharing": (
        [
            [small(pool(0, 1500) + unique(800) + [0] * 300 + [9] * 300)],
            [small(pool(200, 1500) + unique(700) + [0] * 200 + [9] * 350)],
            [small(pool(600, 1200) + unique(900) + [9] * 250), small([0] * 150)],
            [small(unique(500) + pool(0, 800) + [9] * 100 + [0] * 50)],
            [small(pool(1000, 1000) + unique(600) + [9] * 300)],
        ],
        {**EVERY_SCAN, "max_page_sharing": 256},
        scan_and_read(1, 1, 1, 2)),
    "a larger mixed host, use_zero_pages 1": (
        [
            [small(pool(0, 1500) + unique(800) + [0] * 300 + [9] * 300)],
            [small(pool(200, 1500) + unique(700) + [0] * 200 + [9] * 350)],
            [small(pool(600, 1200) + unique(900) + [9] * 250), small([0] * 150)],
            [small(unique(500) + pool(0, 800) + [9] * 100 + [0] * 50)],
        ],
        {**EVERY_SCAN, "max_page_sharing": 256, "use_zero_pages": 1},
        scan_and_read(1, 1, 2)),
    "smart_scan skips unique pages over many scans": (
        [[small(unique(2000) + pool(0, 500))], [small(pool(0, 500) + unique(1000))]],
        {**EVERY_SCAN, "smart_scan": 1},
        scan_and_read(1, 1, 1, 1, 2, 3, 5, 8)),
    "smart_scan off: every page every scan": (
        [[small(unique(2000) + pool(0, 500))], [small(pool(0, 500) + unique(1000))]],
        {**EVERY_SCAN, "smart_scan": 0},
        scan_and_read(1, 1, 1, 5)),
    "smart_scan switched off and on again": (
        [[small(unique(2000) + pool(0, 500))], [small(pool(0, 500) + unique(1000))]],
        {**EVERY_SCAN, "smart_scan": 1},
        scan_and_read(1, 1, 4) + [("knob", "smart_scan", 0)] + scan_and_read(1, 2)
        + [("knob", "smart_scan", 1)] + scan_and_read(1, 6)),
}
