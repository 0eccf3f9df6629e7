# The two commands of the README. Both create .venv first (infra/setup_venv.sh, a no-op when current).
SAMPLE_OUT ?= out/sample

.PHONY: sample test venv
venv:
	@infra/setup_venv.sh

sample: venv
	.venv/bin/pairmine syn4removal --input samples/sa1b --output $(SAMPLE_OUT)

test: venv
	.venv/bin/python -m pytest
