# The two commands of the README. Both create .venv first (infra/setup_venv.sh, a no-op when current).
SAMPLE_OUT ?= out/sample

.PHONY: sample test venv image-cpu image-cuda
venv:
	@infra/setup_venv.sh

sample: venv
	.venv/bin/pairmine syn4removal --input samples/sa1b --output $(SAMPLE_OUT)
	.venv/bin/pairmine report $(SAMPLE_OUT) --out $(SAMPLE_OUT)-report.html

test: venv
	@infra/install_chromium.sh
	.venv/bin/python -m pytest

# Container images for a cluster (infra/Dockerfile; needs docker): the same install, CPU or CUDA torch.
IMAGE ?= pairmine:0.1.0
image-cpu:
	docker build -f infra/Dockerfile -t $(IMAGE)-cpu .

image-cuda:
	docker build -f infra/Dockerfile --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 -t $(IMAGE)-cuda .
