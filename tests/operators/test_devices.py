"""devices: a model stage's actor runs where Ray's GPU assignment says, and a mismatch fails loudly."""

from __future__ import annotations

import pytest
import torch
from models import tiny_clip

from pairmine.operators.clip_scorer import ClipScorerParams
from pairmine.operators.devices import actor_device, ampere_or_later, resolve_precision
from pairmine.operators.syn4removal import EntityScoring
from pairmine.pipelines.model_stages import StageActor


@pytest.mark.parametrize("device, gpus, cuda, expected", [
    ("auto", [], True, "cpu"),  # a num_gpus: 0 actor on a GPU node: Ray no longer hides the GPUs, we do
    ("auto", [], False, "cpu"),
    ("cpu", [], True, "cpu"),
    ("auto", ["0"], True, "cuda"),
    ("cuda", ["1"], True, "cuda"),
])
def test_actor_device_follows_the_gpus_ray_assigned(device, gpus, cuda, expected):
    assert actor_device(device, gpus, cuda) == expected


@pytest.mark.parametrize("device, gpus, cuda, message", [
    ("auto", ["0"], False, "CPU build of torch"),  # holds a GPU, would run on the CPU
    ("cpu", ["0"], True, "reserves a GPU"),
    ("cuda", [], True, "holds no GPU"),
])
def test_actor_device_mismatches_fail_loudly(device, gpus, cuda, message):
    with pytest.raises((RuntimeError, ValueError), match=message):
        actor_device(device, gpus, cuda)


@pytest.mark.parametrize("capability, precision, expected", [
    ((9, 0), "bf16", "bf16"), ((8, 0), "bf16", "bf16"), ((7, 5), "fp16", "fp16"), ((7, 0), "fp32", "fp32"), ((7, 5), "bf16", None),
])
def test_bf16_needs_an_ampere_gpu_and_the_cpu_runs_fp32(monkeypatch, capability, precision, expected):
    """A T4 or V100 emulates bf16 at a fraction of fp16's speed: refused with what to set; TF32 is Ampere's too."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    cuda = torch.device("cuda", 0)
    if expected is None:
        with pytest.raises(ValueError, match=r"Tesla T4 is 7.5: set the stage's precision to fp16"):
            resolve_precision(precision, cuda)
    else:
        assert resolve_precision(precision, cuda) == expected
    assert ampere_or_later(cuda) == (capability[0] >= 8)
    assert resolve_precision(precision, torch.device("cpu")) == "fp32" and not ampere_or_later(torch.device("cpu"))


def test_a_stage_actor_holding_a_gpu_without_cuda_refuses_to_start(tmp_path):
    model, checkpoint = tiny_clip(tmp_path)
    stage = EntityScoring(ClipScorerParams(model=model, checkpoint=checkpoint, num_gpus=1))
    if torch.cuda.is_available():
        assert StageActor(stage, gpu_ids=[0]).stage.params.device == "cuda"
    else:
        with pytest.raises(RuntimeError, match="holds GPU"):
            StageActor(stage, gpu_ids=[0])
    assert StageActor(stage, gpu_ids=[]).stage.params.device == "cpu"
