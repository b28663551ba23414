"""Assembles the BPF C sources in ebpf/ into one BCC translation unit.

BCC rewrites map method calls (`tp_links.lookup(&k)`) only in its main file,
and turns only main-file functions into programs. The sources are still kept
as one entry file per hook with logic in small headers: this module splices
the project's own `#include "..."` headers in textually (once each, like
include guards), with #line markers so compiler errors name the real file and
line. System includes (`<...>`) are left to clang.
"""
from __future__ import annotations

import re
from pathlib import Path

from ebpf import EBPF_DIR

_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


# Where entry files and "..." includes are looked up, first match wins.
ROOTS: list[Path] = [EBPF_DIR]


def assemble(entry_files: list[str], defines: dict[str, int] | None = None,
             roots: tuple[Path, ...] | None = None) -> str:
    """One C text from the given entry files, with `defines` emitted first
    as #define lines. Entry files and "..." includes are looked up in
    `roots` (default ROOTS), first match wins (the lab puts its own
    directory before ours)."""
    roots = tuple(ROOTS) if roots is None else roots
    seen: set[Path] = set()
    out = [f"#define {k} {v}" for k, v in (defines or {}).items()]

    def find(name: str) -> Path:
        for root in roots:
            if (root / name).is_file():
                return (root / name).resolve()
        raise FileNotFoundError(f"BPF source {name} not found in {', '.join(map(str, roots))}")

    def splice(path: Path) -> None:
        if path in seen:
            return
        seen.add(path)
        out.append(f'#line 1 "{path}"')
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            m = _LOCAL_INCLUDE.match(line)
            if m:
                splice(find(m.group(1)))
                out.append(f'#line {lineno + 1} "{path}"')
            else:
                out.append(line)

    for entry in entry_files:
        splice(find(entry))
    return "\n".join(out) + "\n"
