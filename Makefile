# The two set-up commands: `make run` and `make test`. Each creates .venv when missing and installs
# the pinned dependencies only when requirements.lock or pyproject.toml changed (a stamp file).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test lint install bench clean container-tools

run: $(STAMP)
	$(BIN)/visionflow run

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -e .
	@# the page test drives a real browser: Debian's chromium (Playwright's own download is not used)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null)); } || \
	  echo "note: no chromium; the browser test needs it (sudo apt-get install chromium)"
	@$(MAKE) -s container-tools
	@touch $(STAMP)

# The delivery path (`visionflow package --image`, `deploy`) and its tests: Debian's podman, buildah,
# runc, catatonit (podman's pause image), debootstrap (the base image) and docker-registry (a real OCI
# registry on 127.0.0.1). As root only; elsewhere it says what to install. Where crun cannot run
# (cgroups v1 hosts) and root's ulimits are capped, runc and lower ulimits are set once, only if
# /etc/containers/containers.conf does not exist yet.
CONTAINER_PKGS := podman buildah runc catatonit debootstrap docker-registry uidmap
container-tools:
	@missing=""; for t in podman buildah runc debootstrap docker-registry; do command -v $$t >/dev/null || [ -x /usr/bin/$$t ] || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(CONTAINER_PKGS) >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(CONTAINER_PKGS) >/dev/null)); \
	  else echo "note: no$$missing; the delivery tests need them (sudo apt-get install $(CONTAINER_PKGS))"; fi; \
	fi
	@if [ "$$(id -u)" = 0 ] && command -v podman >/dev/null && [ ! -e /etc/containers/containers.conf ]; then \
	  mkdir -p /etc/containers && printf '[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n\n[engine]\nruntime = "runc"\n' > /etc/containers/containers.conf; fi

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ingest.py

clean:
	rm -rf .visionflow data
