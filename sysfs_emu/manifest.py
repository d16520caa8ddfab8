"""The tree's manifest: what sysfs-emu created under a root, so that it removes only that.

Saved as JSON in the tree's state directory; a later run takes over its own leftovers
by it, and refuses files it did not make.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sysfs_emu.errors import TreeError
from sysfs_emu.files import is_pid_name, read_regular, replace_file


@dataclass
class Manifest:
    """The paths (relative to the root) that sysfs-emu created, saved as JSON."""

    path: Path
    dirs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        try:
            raw = json.loads(read_regular(path))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, RecursionError) as exc:
            raise TreeError(f"cannot read {path}: {exc}") from None
        lists = [raw.get(k, []) for k in ("dirs", "files", "pids")] if isinstance(raw, dict) else None
        if (lists is None or not all(isinstance(v, list) for v in lists)
                or not all(isinstance(x, str) for x in lists[0] + lists[1])
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in lists[2])):
            raise TreeError(f"cannot read {path}: not a sysfs-emu manifest (remove it to start afresh)")
        return cls(path, *lists)

    def owns(self, rel: str) -> bool:
        if rel in self.files or rel in self.dirs:
            return True
        parts = rel.split("/")
        return len(parts) >= 2 and parts[0] == "proc" and is_pid_name(parts[1]) and int(parts[1]) in self.pids

    def save(self) -> None:
        data = json.dumps({"dirs": self.dirs, "files": self.files, "pids": sorted(self.pids)}).encode()
        replace_file(self.path, data, tmp=self.path.with_name(self.path.name + ".tmp"))
