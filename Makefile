# The README's two commands. Each first makes whatever set-up is missing.
.PHONY: setup demo test clean-lab

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/twinpath lab scenario blackhole

test: setup
	.venv/bin/python -m pytest -q tests

# Removes every lab namespace and pin this checkout's runs may have left.
clean-lab: setup
	.venv/bin/twinpath lab down --all
