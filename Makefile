# Two entry points for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3.11
VENV   ?= .venv
QT_EXTRA ?= pyqt6
# qtpy (napari's Qt layer) takes this binding even where a venv also holds the other one
export QT_API ?= $(QT_EXTRA)
PY     := $(VENV)/bin/python
# pytest runs under a virtual X server when there is no display (napari's canvas needs OpenGL)
XRUN   := $(if $(DISPLAY),,xvfb-run -a -s "-screen 0 1600x1000x24")
# idle OpenMP threads sleep instead of spinning: napari, the predictor and the trainer share 2 cores
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install run test lint bench clean

# constraints.txt pins the exact torch build this project is tested with (pyproject.toml keeps ranges);
# the pyqt6 extra is the default Qt binding (QT_EXTRA=pyqt5 for PyQt5)
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test,$(QT_EXTRA)]"
	touch $@

install: $(VENV)/.installed

run: install
	$(if $(DISPLAY),,@echo "no DISPLAY: starting napari on a virtual screen (xvfb-run); a screenshot goes to out/run.png")
	$(XRUN) $(VENV)/bin/gitseg view --sample --segment $(if $(DISPLAY),,--screenshot out/run.png --quit-after 60)

test: install
	@command -v xvfb-run >/dev/null || [ -n "$(DISPLAY)" ] || { echo "xvfb-run is missing: apt-get install xvfb xauth (see .ci/run)"; exit 1; }
	$(XRUN) $(PY) -m pytest -q -ra --durations=15 $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

LINTED := napari_gitseg training tests benchmarks setup.py

# ruff's rules and its formatter (line length and the rest in pyproject.toml); CI runs it before the tests
lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

bench: install
	$(PY) benchmarks/bench_predict.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
