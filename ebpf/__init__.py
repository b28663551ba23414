"""BPF C sources, shipped in the wheel and compiled by BCC at daemon start."""
from pathlib import Path

EBPF_DIR = Path(__file__).parent
