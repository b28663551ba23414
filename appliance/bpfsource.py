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

import ebpf

EBPF_DIR = Path(ebpf.__file__).parent
_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def assemble(entry_files: list[str], defines: dict[str, int] | None = None,
             root: Path = EBPF_DIR) -> str:
    """One C text from the given entry files (relative to root), with
    `defines` emitted first as #define lines."""
    seen: set[Path] = set()
    out = [f"#define {k} {v}" for k, v in (defines or {}).items()]

    def splice(path: Path) -> None:
        path = path.resolve()
        if path in seen:
            return
        seen.add(path)
        if not path.is_file():
            raise FileNotFoundError(f"BPF source {path} not found")
        out.append(f'#line 1 "{path}"')
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            m = _LOCAL_INCLUDE.match(line)
            if m:
                splice(root / m.group(1))
                out.append(f'#line {lineno + 1} "{path}"')
            else:
                out.append(line)

    for entry in entry_files:
        splice(root / entry)
    return "\n".join(out) + "\n"
