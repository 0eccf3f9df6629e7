"""The training commands: ``pairmine train``, ``pairmine erase`` and ``pairmine evaluate``."""

from __future__ import annotations

import argparse
import json

from ..pipelines.cli import Command, add_config_arguments, count_arg, fraction_arg, nonnegative_arg, path_arg

TRAIN_EXAMPLES = """examples:
  # fine-tune SmartEraser on two pipeline outputs (weights 0.8 / 0.2), embedded local Ray
  pairmine train --config configs/train_smarteraser.yaml

  # the same on a GPU cluster: 8 GPU workers, bf16, shards and checkpoints on S3
  pairmine train --config configs/train_smarteraser.yaml --set ray.address=auto \\
      --set scaling.num_workers=8 --set scaling.use_gpu=true --set mixed_precision=bf16 \\
      --set storage=s3://runs/erasers

  # the paper's ablations are config changes: no visual guidance, no mask enhancement
  pairmine train --config configs/train_smarteraser.yaml --set name=no-vg \\
      --set eraser.visual_guidance=false --set 'data.mask_enhancement.modes=[exact]'

  # the other erasers: the same trainer, another config
  pairmine train --config configs/train_eradiff.yaml
  pairmine train --config configs/train_omnieraser.yaml --set scaling.use_gpu=true --set mixed_precision=bf16

  # check the config, the weights and the data, show the plan, and stop
  pairmine train --config configs/train_smarteraser.yaml --dry-run

Rerunning the same command resumes the run (<storage>/<name>) from its latest checkpoint, mid-epoch
included; a run whose config changed is refused (give it another name)."""

ERASE_EXAMPLES = """examples:
  # one image: the latest checkpoint of a run, the eraser's inference settings (SmartEraser's release:
  # guidance 1.5, 50 steps)
  pairmine erase --checkpoint runs/smarteraser --image photo.jpg --mask photo_mask.png --out clean.png

  # a folder of images with masks of the same file stems, one checkpoint, on a GPU, 25 steps
  pairmine erase --checkpoint s3://runs/erasers/smarteraser/checkpoint_00002000 \\
      --image photos/ --mask masks/ --out cleaned/ --device cuda --steps 25

Masks: white (> 127; 16-bit: > 32767; colour: the brightest channel) marks the object to erase (in a
0/1 mask, 1). Only the masked pixels change; a .jpg output is re-encoded everywhere (.png keeps the rest exact)."""

EVALUATE_EXAMPLES = """examples:
  # three trained erasers on the held-out split of two outputs: one table, one sheet
  pairmine evaluate --checkpoint runs/smarteraser --checkpoint runs/eradiff --checkpoint runs/omnieraser \\
      --data s3://pairs/syn/v1 --data s3://pairs/video/v1 --samples 32 --sheet compare.png

The held-out split is the one training used (a hash of each sample key, data.val_fraction of the first
checkpoint's run unless --val-fraction is given); every checkpoint sees the same samples at one resolution."""


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "the eraser's weights, the data and the storage have no defaults: start from configs/train_*.yaml")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def _run_train(args: argparse.Namespace) -> int:
    from ..pipelines.run import print_config
    from .config import TrainParams
    from .run import format_summary, plan_summary, prepare, train

    if args.print_config:
        return print_config(TrainParams, args)
    if args.dry_run:
        print(json.dumps(plan_summary(prepare(args.config, args.set)), indent=2))
        return 0
    print(format_summary(train(args.config, args.set, progress_bars=not args.no_progress)))
    return 0


def _add_erase_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=path_arg, metavar="PATH",
                        help="a training run folder (its latest checkpoint), a checkpoint, or a saved eraser; local or s3://")
    parser.add_argument("--image", required=True, type=path_arg, metavar="PATH", help="an image, or a folder of images; local or s3://")
    parser.add_argument("--mask", required=True, type=path_arg, metavar="PATH", help="its mask (white = erase; a 0/1 mask: 1 = erase), or a folder of masks with the same stems; local or s3://")
    parser.add_argument("--out", required=True, type=path_arg, metavar="PATH", help="the output image (its extension picks the format: .jpg, .jpeg, .png, .webp, .bmp, .tif, .tiff), or a folder (PNGs named by stem); local or s3://")
    parser.add_argument("--steps", type=count_arg, metavar="N", help="denoising steps (default: the eraser's; SmartEraser and EraDiff 50, OmniEraser 28)")
    parser.add_argument("--guidance", type=nonnegative_arg, metavar="G", help="guidance scale (default: the eraser's; SmartEraser 1.5, EraDiff 1: none, OmniEraser 3.5: FLUX's distilled guidance)")
    parser.add_argument("--resolution", type=count_arg, metavar="PX", help="short side the eraser works at (default: its training resolution)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the eraser runs (auto: CUDA if present)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise")


def _run_erase(args: argparse.Namespace) -> int:
    from .erase import erase_files

    overrides = {k: v for k, v in (("inference_steps", args.steps), ("guidance_scale", args.guidance)) if v is not None}
    result = erase_files(args.checkpoint, args.image, args.mask, args.out, args.device, args.resolution, args.seed, overrides)
    print(f"{result['eraser']} ({result['checkpoint']}): {result['erased']} erased at {result['resolution']} px"
          + (f", {len(result['failed'])} failed" if result["failed"] else "") + f" -> {args.out}")
    return 1 if result["failed"] else 0


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", action="append", required=True, type=path_arg, metavar="PATH",
                        help="a run folder, a checkpoint or a saved eraser, local or s3:// (repeat to compare)")
    parser.add_argument("--data", action="append", required=True, type=path_arg, metavar="OUTPUT", help="a pipeline output, local or s3:// (repeatable)")
    parser.add_argument("--samples", type=count_arg, default=16, metavar="N", help="held-out samples to score (default 16)")
    parser.add_argument("--val-fraction", type=fraction_arg, metavar="F", help="the held-out share (default: the first checkpoint's run's)")
    parser.add_argument("--resolution", type=count_arg, metavar="PX", help="square side of the samples (default: the first checkpoint's)")
    parser.add_argument("--sheet", type=path_arg, metavar="PNG", help="write the predictions side by side to this PNG, local or s3://")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the erasers run (auto: CUDA if present)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_table

    result = evaluate(args.checkpoint, args.data, args.samples, args.device, args.resolution, args.val_fraction, args.seed, args.sheet)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


COMMANDS = [
    Command("train", "fine-tune an eraser on pipeline outputs with Ray Train (resumable, local or S3)",
            "Train an object-removal model (SmartEraser, EraDiff or OmniEraser) on the shards of one or more pipeline outputs with Ray Train: "
            "streamed and augmented on Ray Data, data-parallel workers, checkpoints with validation every N steps.",
            TRAIN_EXAMPLES, _add_train_arguments, _run_train),
    Command("erase", "remove the masked objects from images with a trained eraser",
            "Run a trained eraser on an image and its mask (or folders of them); pixels outside the mask are kept as they are.",
            ERASE_EXAMPLES, _add_erase_arguments, _run_erase,
            "exit codes: 0 every image erased, 1 some could not be (each named; the others are written),\n"
            "2 bad arguments or checkpoint (nothing was run)."),
    Command("evaluate", "compare trained erasers on the same held-out samples (PSNR / SSIM in the mask, change outside)",
            "Score one or more trained erasers on the held-out split of pipeline outputs: PSNR and SSIM inside the mask, the mean "
            "change outside it and seconds per image, as one table, with the predictions side by side on a sheet.",
            EVALUATE_EXAMPLES, _add_evaluate_arguments, _run_evaluate),
]
