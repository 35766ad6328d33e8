# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test test-fast bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

# Tests run a real Mosquitto broker, and the web console's tests Debian's Chromium (driven by
# Playwright; never `playwright install`). Install what is missing when we may (root + apt).
system-deps:
	@missing=""; \
	if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then missing=" mosquitto"; fi; \
	if [ ! -x /usr/bin/chromium ]; then missing="$$missing chromium chromium-driver"; fi; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing:$$missing (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "note: not installed and cannot be installed here:$$missing (the broker / browser tests skip without them)"; fi

demo: $(STAMP)
	$(VENV)/bin/tandem-sim demo

test: $(STAMP) system-deps
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/compile.py --json

# atheris targets in fuzz/ (one per network decoder), FUZZ_SECONDS each; skips without atheris.
fuzz: $(STAMP)
	$(PY) fuzz/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
