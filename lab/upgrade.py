"""`python -m lab.upgrade run ...`: twinpath as a next release with a changed
map layout would run, for the upgrade scenario (lab.ops).

The product's sources, with struct tp_health given one more field and its
map's version moved on (ebpf/lib/pin.h's rule), put ahead of ebpf/ in the
source roots: the daemon then finds tp_health pinned at the old version and
migrates it, as a real upgrade across a layout change would. Everything
else is the product's own code.
"""
from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from appliance import cli
from appliance.edge import bpfsource
from ebpf import EBPF_DIR

ADDED_FIELD = "\t__u64 upgrade_marker;       /* the next release's new field (lab.upgrade) */\n"


def next_release_sources(root: Path) -> Path:
    """Writes lib/layout.h and lib/maps.h of the 'next release' under root."""
    lib = root / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    layout_h = (EBPF_DIR / "lib" / "layout.h").read_text()
    layout_h, n = re.subn(r"(struct tp_health \{.*?)(\};)", lambda m: m.group(1) + ADDED_FIELD + m.group(2),
                          layout_h, count=1, flags=re.S)
    maps_h = (EBPF_DIR / "lib" / "maps.h").read_text()
    maps_h, m = re.subn(r"(struct tp_health, tp_health, TP_MAX_LINKS, )(\d+)",
                        lambda g: g.group(1) + str(int(g.group(2)) + 1), maps_h, count=1)
    if n != 1 or m != 1:
        raise SystemExit("lab.upgrade: struct tp_health or its TP_MAP declaration not found")
    (lib / "layout.h").write_text(layout_h)
    (lib / "maps.h").write_text(maps_h)
    return root


def main(argv: list[str] | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="twinpath-next-release-") as tmp:
        bpfsource.ROOTS.insert(0, next_release_sources(Path(tmp)))
        return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
