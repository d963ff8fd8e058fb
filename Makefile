# Two commands on a fresh machine: `make quickstart` and `make test`. Each creates .venv on first
# use: the CPU build of torch first (a bare `torch` requirement would pull a multi-GB CUDA build),
# then mtl-ray with its test extras. `make test-fast` is the inner loop: everything but the
# end-to-end runs marked `slow`.

VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# As `activate` would: the tests and the local stack find this environment's ray, mlflow and moto_server first.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: quickstart test test-fast lint

$(INSTALLED): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --progress-bar off torch==2.13.0
	$(BIN)/pip install --progress-bar off -e ".[test]"
	touch $@

quickstart: $(INSTALLED)
	$(BIN)/mtl-ray quickstart

lint: $(INSTALLED)
	$(BIN)/ruff check .

# pytest exits 5 when it collected no tests: that is a failure too. The tests without Ray run in three
# processes (pytest-xdist; on 2 cores a third overlaps the others' waits on servers starting), the
# end-to-end runs in one, so that they share one local Ray.
PYTEST = run() { "$$@"; rc=$$?; [ $$rc -ne 5 ] || echo "pytest collected no tests: failing" >&2; return $$(( rc == 5 ? 1 : rc )); }

test: lint
	@$(PYTEST); run $(BIN)/pytest -m "not slow" -n 3 && run $(BIN)/pytest -m slow

test-fast: lint
	@$(PYTEST); run $(BIN)/pytest -m "not slow" -n 3
