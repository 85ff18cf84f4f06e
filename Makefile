# pixellm: `make demo` runs the main job on the synthetic task, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup test demo grounding-demo rehearsal lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

test: setup
	WANDB_MODE=disabled HF_HUB_OFFLINE=1 $(PY) -m pytest tests

demo: setup
	WANDB_MODE=offline HF_HUB_OFFLINE=1 $(PY) -m pixellm.demo

grounding-demo: setup  # does grounding emerge without masks? 3 tiny runs (about 35 min): outputs/grounding_demo
	WANDB_MODE=offline HF_HUB_OFFLINE=1 $(PY) -m pixellm.grounding.demo --mix 0.5

rehearsal: setup  # the 7B recipe at real widths on CPU (about 40 min): outputs/rehearsal/report.json
	WANDB_MODE=offline HF_HUB_OFFLINE=1 $(PY) -m pixellm.rehearsal

lint: setup
	$(VENV)/bin/ruff check pixellm tests benchmarks train.py evaluate.py

clean:
	rm -rf outputs .pytest_cache
