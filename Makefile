# The README's two commands. Each first makes whatever set-up is missing.
.PHONY: setup demo test bench bench-quick clean-lab wheel

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/python -m lab scenario blackhole

test: setup
	.venv/bin/python -m pytest -q tests

# Benchmarks: results, REPORT.md and plots in bench/results/<timestamp>/.
bench: setup
	.venv/bin/python -m bench

bench-quick: setup
	.venv/bin/python -m bench --quick

# Removes every lab namespace and pin this checkout's runs may have left.
clean-lab: setup
	.venv/bin/python -m lab down --all

# The release the Ansible role installs (README: "Fleet rollout with Ansible"): dist/twinpath-<version>-*.whl
# and its dependencies' wheels beside it (gateways reach no package index).
wheel: setup
	.venv/bin/python -m pip wheel -q --no-build-isolation -w dist .
	@ls dist/twinpath-*.whl
