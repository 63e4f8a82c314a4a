# snf: two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SNF    := $(VENV)/bin/snf
STAMP  := $(VENV)/.installed
OUT    := out

.PHONY: setup demo test unit integration lint bench kafka-jars clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "snf needs Python >= 3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@$(PY) -c 'import crc32c' || { echo "crc32c C extension missing"; exit 1; }
	touch $(STAMP)

kafka-jars: setup
	$(PY) -c 'from snf.kafka.cluster import ensure_jars; print(ensure_jars(print))'

# The main job: the bundled edge capture through the four-function edge chain
# (firewall -> nat -> loadbalancer -> flowmon) on a local broker, then the
# monitoring chain (ids -> ratelimit -> flowmon), then the tap graph (branches,
# fan-out, fan-in). Writes out/<name>.pcapng (open it in Wireshark) and
# out/<name>-events/ (drops, alerts, flow records).
demo: setup kafka-jars
	mkdir -p $(OUT)
	$(SNF) run pipelines/edge.yaml pipelines/captures/edge.pcapng \
		--out $(OUT)/edge.pcapng --events $(OUT)/edge-events
	$(SNF) run pipelines/monitoring.yaml pipelines/captures/monitoring.pcapng \
		--out $(OUT)/monitoring.pcapng --events $(OUT)/monitoring-events
	$(SNF) run pipelines/tap.yaml pipelines/captures/monitoring.pcapng \
		--out $(OUT)/tap.pcapng --events $(OUT)/tap-events

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

clean:
	rm -rf $(VENV) $(OUT) build *.egg-info
