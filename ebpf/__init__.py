"""BPF C sources, shipped in the wheel and compiled by BCC at daemon start."""
