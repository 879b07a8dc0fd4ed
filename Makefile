# The two commands of the README: `make demo` and `make test`.
# Each works on a fresh machine by itself: it creates .venv, installs the
# project and resolves the Kafka jars from Maven Central when they are missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit integration torture bench kafka-jars clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

kafka-jars: $(STAMP)
	$(BIN)/sendonce dev kafka fetch

demo: $(STAMP) kafka-jars
	$(BIN)/sendonce demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck kafka-jars
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP) kafka-jars
	$(BIN)/pytest tests/integration

# The long torture run of issues 5, 15 and 17 (about 75 minutes on 2 cores: 15 of
# schedule, then the backlog drains; the drain may take up to an hour): 100,000 intents, 50
# SIGKILLs, 20 pauses, 10 rebalances (5 workers added and removed), 2 broker restarts
# and 3 partition-leader kills on a three-broker cluster, Graph in draft-send mode
# (GRAPH_MODE=sendmail for the one-call mode). SEED=n replays a schedule.
GRAPH_MODE ?= draft-send
torture: $(STAMP) kafka-jars
	$(BIN)/sendonce dev chaos --intents 100000 --workers 3 --kills 50 --pauses 20 \
		--rebalances 5 --broker-restarts 2 --brokers 3 --leader-kills 3 \
		--duration 900 --drain-timeout 3600 --graph-mode $(GRAPH_MODE) $(if $(SEED),--seed $(SEED))

# The benchmark of issue 6: throughput, latency, memory and restore beside the Kafka
# ceiling and a naive baseline. About 35 minutes on 2 cores, 25 of them restoring the
# 10M-key ledger (ARGS="--keys 1000000": about 12); ARGS="--only ceiling,sendonce-null"
# narrows it. The table, bench.json and bench.png go to /tmp/bench-out (--out DIR).
bench: $(STAMP) kafka-jars
	$(BIN)/python -m sendonce.bench $(ARGS)

clean:
	rm -rf $(VENV) .sendonce deploy/local-kafka/lib .pytest_cache .mypy_cache .ruff_cache
