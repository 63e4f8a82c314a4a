# snf: two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SNF    := $(VENV)/bin/snf
STAMP  := $(VENV)/.installed
OUT    := out
# Every dependency pinned with its hashes: the runtime (the image installs it)
# and runtime + test (make setup). `make lock` regenerates both.
LOCK      := requirements.lock
TEST_LOCK := requirements-test.lock
UV        := build/uv/bin/uv

.PHONY: setup demo test unit integration lint bench kafka-jars lock clean

setup: $(STAMP) tshark live-tools

# Wireshark's tshark checks snf's ESP (tests/unit/test_ipsec_tshark.py). Installed
# with apt when missing and we are root (apt-get update only if the install fails;
# noninteractive answers wireshark-common's capture question with its default, no);
# elsewhere setup goes on and that test skips.
.PHONY: tshark
tshark:
	@command -v tshark >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  { $(APT_TSHARK) || { apt-get update -q && $(APT_TSHARK); }; }; } || \
		echo "tshark not installed: its test will skip"
APT_TSHARK = DEBIAN_FRONTEND=noninteractive apt-get install -y -q tshark </dev/null

# `snf lab` and the live tests (docs/LIVE.md) use ip, ethtool, ping, curl and iperf3.
# The missing ones in one apt-get install when we are root (apt-get update only if it
# fails; noninteractive answers iperf3's "start a daemon?" with its default, no);
# elsewhere setup goes on and `snf lab up` says what is missing (tests/unit/test_lab.py
# skips unless root).
.PHONY: live-tools
LIVE_TOOLS = ip:iproute2 ethtool:ethtool ping:iputils-ping curl:curl iperf3:iperf3
live-tools:
	@missing=; for t in $(LIVE_TOOLS); do \
		PATH="$$PATH:/usr/sbin:/sbin" command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; \
	done; \
	[ -z "$$missing" ] || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  { $(APT_LIVE) $$missing </dev/null || \
		    { apt-get update -q && $(APT_LIVE) $$missing </dev/null; }; }; } || \
		echo "not installed:$$missing (snf lab needs ip and ethtool; see docs/LIVE.md)"
APT_LIVE = DEBIAN_FRONTEND=noninteractive apt-get install -y -q

$(STAMP): pyproject.toml $(LOCK) $(TEST_LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "snf needs Python >= 3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r $(TEST_LOCK)
	$(PY) -m pip install -q --no-deps -e .
	@$(PY) -c 'import crc32c' || { echo "crc32c C extension missing"; exit 1; }
	touch $(STAMP)

kafka-jars: setup
	$(PY) -c 'from snf.kafka.cluster import ensure_jars; print(ensure_jars(print))'

# The main job: the bundled edge capture through the four-function edge chain
# (firewall -> nat -> loadbalancer -> flowmon) on a local broker, then the
# monitoring chain (ids -> ratelimit -> flowmon), then the tap graph (branches,
# fan-out, fan-in), then the IPsec gateway (ipsec decrypt -> firewall -> ipsec
# encrypt; its demo keys are in pipelines/keys/). Writes out/<name>.pcapng (open
# it in Wireshark) and out/<name>-events/ (drops, alerts, flow records).
demo: setup kafka-jars
	mkdir -p $(OUT)
	$(SNF) run pipelines/edge.yaml pipelines/captures/edge.pcapng \
		--out $(OUT)/edge.pcapng --events $(OUT)/edge-events
	$(SNF) run pipelines/monitoring.yaml pipelines/captures/monitoring.pcapng \
		--out $(OUT)/monitoring.pcapng --events $(OUT)/monitoring-events
	$(SNF) run pipelines/tap.yaml pipelines/captures/monitoring.pcapng \
		--out $(OUT)/tap.pcapng --events $(OUT)/tap-events
	$(SNF) run pipelines/vpn.yaml pipelines/captures/vpn.pcapng \
		--out $(OUT)/vpn.pcapng --events $(OUT)/vpn-events

test: setup kafka-jars
	$(VENV)/bin/ruff check snf functions tests bench pipelines
	$(VENV)/bin/pytest -q tests/unit
	$(VENV)/bin/pytest -q tests/integration

unit: setup
	$(VENV)/bin/pytest -q tests/unit

lint: setup
	$(VENV)/bin/ruff check snf functions tests bench pipelines
	$(VENV)/bin/ruff format --check snf functions tests bench pipelines

bench: setup kafka-jars
	$(PY) bench/firewall_throughput.py --out bench/results/firewall.json
	$(PY) bench/suite_throughput.py --kafka --out bench/results/suite.json
	$(PY) bench/deploy_lifecycle.py --out bench/results/deploy.json
	$(PY) bench/guarantee_cost.py --captures pipelines/captures/edge.pcapng --loop 100 --out bench/results/guarantee.json
	$(PY) bench/chaos_suite.py --kills 20 --out bench/results/chaos.json
	$(PY) bench/chaos_suite.py --kills 20 --warm --out bench/results/chaos_warm.json
	$(PY) bench/ipsec.py --out bench/results/ipsec.json
	$(PY) -m pip install -q --target build/pcapy pcapy-ng  # the libpcap contender, outside the venv
	$(PY) bench/live_capture.py --pcapy-path build/pcapy --out bench/results/live_capture.json  # root
	$(PY) bench/live_inline.py --out bench/results/live_inline.json  # root: snf lab

# After a change to pyproject.toml's dependencies. Pins already in the locks
# are kept; `make lock UPGRADE=--upgrade` moves everything to the newest releases.
# Resolved for Linux and the Python of the image (3.11); the test lock takes the
# runtime lock as constraints, so both install the same versions.
UV_FLAGS = --generate-hashes --python-version 3.11 --python-platform linux \
	--custom-compile-command 'make lock' -q $(UPGRADE)
lock:
	test -x $(UV) || { $(PYTHON) -m venv build/uv && build/uv/bin/pip install -q uv==0.13.9; }
	$(UV) pip compile pyproject.toml $(UV_FLAGS) -o $(LOCK)
	$(UV) pip compile pyproject.toml --extra test -c $(LOCK) $(UV_FLAGS) -o $(TEST_LOCK)

clean:
	rm -rf $(VENV) $(OUT) build *.egg-info
