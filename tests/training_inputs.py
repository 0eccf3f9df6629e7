"""Training configs for tests: small runs of tiny models over pipeline outputs."""

from __future__ import annotations

from pathlib import Path


def train_config(tmp_path: Path, parts: dict, sources: list[tuple[str, float]], eraser: str = "smarteraser", **overrides) -> Path:
    """A small training config file (64 px, batch 2, 4 inference steps) of `eraser` over `sources`."""
    import yaml

    config = {
        "batch_size": 2, "max_steps": 20, "mixed_precision": "no",
        "eraser": {"name": eraser, **parts, "inference_steps": 4, **({"lora_rank": 4, "lora_alpha": 4} if eraser == "omnieraser" else {})},
        "data": {"sources": [{"output": str(o), "weight": w} for o, w in sources], "resolution": 64, "val_fraction": 0.1,
                 "val_samples": 4, "shuffle_buffer": 0},
        "optim": {"learning_rate": 1e-3}, "storage": str(tmp_path / "runs"), "name": "run", "checkpoint_every": 10, "log_every": 5,
        "scaling": {"num_workers": 1, "cpus_per_worker": 1.0},
    }
    for dotted, value in overrides.items():
        node = config
        *path, last = dotted.split("__")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def overfit_losses(model, batch: dict, steps: int = 40, lr: float = 2e-3, seeds: int = 4) -> list[float]:
    """Mean losses of `steps` optimizer steps of an eraser on one batch (the noise cycles over `seeds` draws)."""
    import torch

    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=lr)
    losses = []
    for step in range(steps):
        loss = model(batch, generator=torch.Generator().manual_seed(step % seeds)).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses
