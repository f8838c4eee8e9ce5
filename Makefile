# Two commands matter: `make dev` (run the embedded server) and `make test` (run every test).
.PHONY: dev test check bench fmt

dev:
	scripts/bootstrap
	.venv/bin/trackyard dev

test:
	scripts/bootstrap --test
	scripts/netns .venv/bin/pytest -q $(PYTEST_ARGS)

check:
	scripts/check

fmt:
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

bench:
	scripts/bootstrap
	scripts/netns .venv/bin/python -m benchmarks.join_latency
	scripts/netns .venv/bin/python -m benchmarks.signal_bridge
	scripts/netns .venv/bin/python -m benchmarks.agent_dispatch
	.venv/bin/python -m benchmarks.placement
	.venv/bin/python -m benchmarks.forwarding
	scripts/netns .venv/bin/python -m benchmarks.load_test
	scripts/netns .venv/bin/python -m benchmarks.load_test --cluster
