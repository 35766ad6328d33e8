# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: install system-deps browser-deps db-deps kserve-venv test-wheels demo test test-fast lint bench fuzz clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

# `make demo` installs only the demo extra (no pytest, playwright, schemathesis, atheris);
# `make test`'s stamp installs everything on top.
DEMO_STAMP := $(VENV)/.installed-demo
$(DEMO_STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[demo]'
	touch $(DEMO_STAMP)

# The hub's fleet broker is Mosquitto (MQTT 5; the embedded amqtt fallback speaks only 3.1.1, so
# telemetry and rollouts need Mosquitto), and the web console's tests drive Debian's Chromium
# (through Playwright; never `playwright install`); Triton's perf_analyzer (tests/test_perf_analyzer.py)
# links libb64. Install what is missing when we may (root + apt).
APT_INSTALL = if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing:$$missing (apt-get)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	    || echo "note: apt-get could not install$$missing (what needs it is skipped)"; \
	else echo "note: not installed and cannot be installed here:$$missing (what needs it is skipped)"; fi

system-deps:
	@missing=""; \
	if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then missing=" mosquitto"; fi; \
	if ! command -v promtool >/dev/null 2>&1; then missing="$$missing prometheus"; fi; \
	if ! ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then missing="$$missing libb64-0d"; fi; \
	$(APT_INSTALL)

browser-deps:
	@missing=""; \
	if [ ! -x /usr/bin/chromium ]; then missing=" chromium chromium-driver"; fi; \
	$(APT_INSTALL)

# PostgreSQL's server binaries (initdb, pg_ctl) for the hub's second storage backend: tests/pg_fixtures.py
# starts a throwaway cluster from them. Only `make test` needs them (`make demo` stays on SQLite).
db-deps:
	@missing=""; \
	if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then \
	  missing=" postgresql"; fi; \
	$(APT_INSTALL)

# The suites that exercise the hub's stores, run a second time with every test hub on PostgreSQL
# (TANDEM_TEST_DATABASE=postgresql; tests/test_hub_storage_backends.py covers both in the first pass).
HUB_STORAGE_SUITES := tests/test_hub_registry.py tests/test_hub_devices.py tests/test_hub_auth.py \
	tests/test_hub_restart.py tests/test_hub_presence.py tests/test_hub_hard_examples.py \
	tests/test_telemetry_hub.py tests/test_ota_rollout_e2e.py
# ... and the rest of the hub's suites (REST, console, rollouts, telemetry, cluster, OTA, drift), their fast
# tests only (the slow pass already runs the failover test on both backends); tests that read hub.db itself
# are marked sqlite_only and skip in this pass.
HUB_PG_FAST_SUITES := $(filter-out $(HUB_STORAGE_SUITES),$(sort $(wildcard tests/test_hub_*.py \
	tests/test_rollout*.py tests/test_console*.py tests/test_telemetry_*.py tests/test_cluster_*.py \
	tests/test_ota*.py tests/test_drift*.py)))

# KServe's own ModelServer for tests/test_fallback_kserve.py (a third-party v2 server as the agent's
# fallback), in a virtualenv of its own: kserve pins protobuf<7, this project needs 7. Made once (~1-2 min).
KSERVE_VENV := build/kserve-venv
KSERVE_STAMP := $(KSERVE_VENV)/.installed
$(KSERVE_STAMP):
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install -q 'kserve==0.21.0' 'onnxruntime>=1.17'
	touch $(KSERVE_STAMP)

kserve-venv: $(KSERVE_STAMP)

# Real models that PyPI wheels carry, for tests (tests/test_silero_stream.py): fetched once with
# `pip download --no-deps`, never installed (silero-vad depends on torch); bench/_wheels.py reads the
# same cache. Offline, the tests that need a wheel skip locally and fail under TANDEM_REQUIRE_ALL=1.
export TANDEM_WHEEL_CACHE ?= $(HOME)/.cache/tandem-bench/wheels
TEST_WHEELS := silero-vad==6.2.3
test-wheels: $(STAMP)
	@for spec in $(TEST_WHEELS); do \
	  stem=$$(echo $${spec%%==*} | tr - _); version=$${spec##*==}; \
	  ls "$(TANDEM_WHEEL_CACHE)"/$$stem-$$version-*.whl >/dev/null 2>&1 \
	    || $(PY) -m pip download -q --no-deps "$$spec" -d "$(TANDEM_WHEEL_CACHE)" \
	    || echo "note: could not fetch $$spec into $(TANDEM_WHEEL_CACHE) (what needs it is skipped)"; \
	done

demo: $(DEMO_STAMP) system-deps
	$(VENV)/bin/tandem-sim demo

# Four named passes, all in CI: the fast suite (what a developer runs while working), the tests marked
# slow (real processes killed, long outages, whole compiles), then the hub storage suites on PostgreSQL
# and the fast tests of the rest of the hub's suites on PostgreSQL.
test: $(STAMP) system-deps browser-deps db-deps kserve-venv test-wheels
	@echo "== make test: fast tests (-m 'not slow') =="
	$(PY) -m pytest -q -m "not slow"
	@echo "== make test: slow tests (-m slow) =="
	$(PY) -m pytest -q -m slow
	@echo "== make test: hub storage suites on PostgreSQL =="
	TANDEM_TEST_DATABASE=postgresql $(PY) -m pytest -q $(HUB_STORAGE_SUITES)
	@echo "== make test: the rest of the hub suites on PostgreSQL (fast tests) =="
	TANDEM_TEST_DATABASE=postgresql $(PY) -m pytest -q -m "not slow" $(HUB_PG_FAST_SUITES)

# ruff (lint) and mypy (types), configured in pyproject.toml; .ci/run runs it before the tests.
lint: $(STAMP)
	PY=$(PY) bash .ci/lint

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/compile.py --json

# atheris targets in fuzz/ (one per network decoder), FUZZ_SECONDS each; skips without atheris.
fuzz: $(STAMP)
	$(PY) fuzz/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
