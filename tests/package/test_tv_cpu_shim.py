"""tv_cpu_shim: torchvision imports on CPU torch once pairmine is imported, and only then (fresh interpreters).

Each check runs in a subprocess: an interpreter that has imported torchvision cannot show what a first
import does. The brute-force NMS below compares every pair of boxes through a full IoU matrix.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, path: list[str] = ()) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter of this venv, with the repository (and `path`) importable."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*path, str(REPO)]), HF_HUB_OFFLINE="1")
    env.pop("TORCHVISION_WARN_WHEN_EXTENSION_LOADING_FAILS", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120)


def test_without_the_shim_torchvision_and_transformers_models_fail():
    result = run_python(
        """
        try:
            import torchvision
        except RuntimeError as exc:
            print("torchvision:", exc)
        try:
            from transformers import BertModel
        except ModuleNotFoundError as exc:
            print("transformers:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "torchvision: operator torchvision::nms does not exist" in result.stdout
    assert "transformers: Could not import module 'BertModel'" in result.stdout


BRUTE_FORCE_CHECK = textwrap.dedent("""
    import numpy as np
    import torch
    import torchvision
    from torchvision.ops import batched_nms, nms

    def brute_force_nms(boxes, scores, iou):
        x1, y1, x2, y2 = boxes.T
        area = (x2 - x1) * (y2 - y1)
        w = np.clip(np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1), 0, None)
        h = np.clip(np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1), 0, None)
        overlap = w * h / (area[:, None] + area - w * h)
        keep = []
        for i in np.argsort(-scores):
            if all(overlap[i, k] <= iou for k in keep):
                keep.append(int(i))
        return keep

    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 100, (300, 2))
    boxes = np.hstack([corners, corners + rng.uniform(5, 40, (300, 2))]).astype(np.float32)
    scores = rng.permutation(300).astype(np.float32) / 300  # distinct scores: one right answer
    labels = rng.integers(0, 4, 300)
    for iou in (0.1, 0.3, 0.6):
        kept = nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).tolist()
        assert kept == brute_force_nms(boxes, scores, iou), iou
        per_label = [
            i for c in range(4)
            for i in np.flatnonzero(labels == c)[brute_force_nms(boxes[labels == c], scores[labels == c], iou)]
        ]
        batched = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), iou).tolist()
        assert batched == sorted(per_label, key=lambda i: -scores[i]), iou
        assert 0 < len(kept) < len(batched) < 300  # boxes of different labels never suppress each other
    print("nms ok")
""")


def test_import_pairmine_makes_torchvision_nms_work():
    result = run_python("import pairmine\n" + BRUTE_FORCE_CHECK)
    assert result.returncode == 0, result.stderr
    assert "nms ok" in result.stdout


def test_models_that_need_torchvision_import_after_pairmine():
    result = run_python(
        """
        import pairmine
        import open_clip
        from transformers import BertModel
        print(open_clip.__version__, BertModel.__name__)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "BertModel" in result.stdout


def test_import_pairmine_imports_no_torch_and_install_lazy_is_idempotent():
    result = run_python(
        """
        import sys
        import pairmine
        from pairmine import tv_cpu_shim
        tv_cpu_shim.install_lazy()
        tv_cpu_shim.install_lazy()  # as Ray's worker_process_setup_hook does after the package import
        print(sorted(m for m in ("torch", "torchvision") if m in sys.modules))
        print(sum(isinstance(f, tv_cpu_shim._ShimOnImport) for f in sys.meta_path))
        import torchvision
        print(tv_cpu_shim.install(), tv_cpu_shim.install())
        tv_cpu_shim.install_lazy()
        print(sum(isinstance(f, tv_cpu_shim._ShimOnImport) for f in sys.meta_path))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:4] == ["[]", "1", "True True", "1"]


def test_eager_install_without_the_lazy_hook():
    result = run_python(
        "import sys\n"
        "from pairmine import tv_cpu_shim\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, tv_cpu_shim._ShimOnImport)]\n"
        "assert tv_cpu_shim.install() is True\n" + BRUTE_FORCE_CHECK
    )
    assert result.returncode == 0, result.stderr
    assert "nms ok" in result.stdout


@pytest.fixture
def torchvision_with_loadable_ops(tmp_path) -> Path:
    """A stand-in torchvision whose _C.so loads (torch's own libc10), as a matching CUDA build's would."""
    package = tmp_path / "torchvision"
    (package / "ops").mkdir(parents=True)
    (package / "_C.so").symlink_to(Path(importlib.util.find_spec("torch").origin).parent / "lib" / "libc10.so")
    (package / "__init__.py").write_text("INIT_RAN = True\n")
    (package / "ops" / "__init__.py").write_text("")
    (package / "ops" / "boxes.py").write_text("def _assert_has_ops():\n    raise RuntimeError('untouched')\n")
    return tmp_path


def test_inert_where_the_real_ops_load(torchvision_with_loadable_ops):
    result = run_python(
        """
        import pairmine, torch, torchvision, torchvision.ops.boxes as boxes
        from pairmine import tv_cpu_shim
        print(tv_cpu_shim.install(), hasattr(torch.ops.torchvision, "nms"), torchvision.INIT_RAN)
        try:
            boxes._assert_has_ops()
        except RuntimeError as exc:
            print(exc)
        """,
        path=[str(torchvision_with_loadable_ops)],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["False False True", "untouched"]
