"""The ``pairmine`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .. import __version__

EXAMPLES = {
    "syn4removal": """examples:
  # the bundled sample, embedded local Ray
  pairmine syn4removal --input samples/sa1b --output out/sample

  # SA-1B tars and a COCONut panoptic root from S3, shards to S3, two overrides
  pairmine syn4removal --input s3://data/sa1b/ --input panoptic:s3://data/coconut \\
      --output s3://pairs/syn/v1 --config configs/syn4removal.yaml \\
      --set placement.max_rotation_deg=10 --set pairing.pairs_per_background=2

  # check config and inputs, show what is left to do, and stop
  pairmine syn4removal --input sa1b/ --output out/ --dry-run

inputs: an SA-1B .tar, a folder of SA-1B tars, a folder of loose SA-1B jpg+json, or a COCO/COCONut
panoptic root (annotations/panoptic_<split>.json); prefix KIND: (sa1b-tar:, sa1b-dir:, panoptic:)
when a folder holds several kinds. Local paths or s3:// URIs; S3 settings come from the AWS
environment (AWS_ENDPOINT_URL, credentials, AWS_REGION).

Rerunning with the same --output and config continues where the last run stopped and skips
finished inputs; exit codes: 0 done, 2 bad arguments/config/inputs (nothing was run), 1 failure.
""",
    "video4removal": """examples:
  # a folder of static-camera clips, embedded local Ray
  pairmine video4removal --input videos/ --output out/video

  # from S3 to S3, analysing every 2nd frame at 640 px
  pairmine video4removal --input s3://data/cctv/ --output s3://pairs/video/v1 \\
      --config configs/video4removal.yaml --set decode.stride=2 --set decode.analysis_long_side=640

inputs: a video file or a folder (searched recursively) of .mp4/.mov/.mkv/.avi/.webm/... videos,
local or s3:// (read by range, not copied). Videos are cut into segments processed in parallel;
a video or part with a moving camera, cuts, flicker or no clean background frame yields no pair
and a reject that says why.

Rerunning with the same --output and config continues where the last run stopped and skips
finished segments; exit codes: 0 done, 2 bad arguments/config/inputs (nothing was run), 1 failure.
""",
}
DESCRIPTIONS = {
    "syn4removal": (
        "synthetic triplets: entities from segmented images pasted into other images",
        "Syn4Removal (SmartEraser): cut entities out of SA-1B / COCO-panoptic images and paste them into other "
        "images at positions that bury no object, with feathered alpha blending; writes (source.jpg, mask.png, "
        "target.jpg, alpha.png, json) samples.",
    ),
    "video4removal": (
        "real pairs from static-camera videos: frames with and without a moving object",
        "Video4Removal (OmniEraser): MOG2 background subtraction on static segments of each video, frames paired "
        "by MSE outside the object, object masks from the MOG foreground; writes (source.jpg, mask.png, "
        "target.jpg, json) samples.",
    ),
}


def _jobs():
    from .syn4removal import JOB as SYN4REMOVAL
    from .video4removal import JOB as VIDEO4REMOVAL

    return {"syn4removal": SYN4REMOVAL, "video4removal": VIDEO4REMOVAL}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pairmine",
        description="Mine (source, mask, target) training pairs for object-removal models, written as WebDataset shards.",
    )
    parser.add_argument("--version", action="version", version=f"pairmine {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, description) in DESCRIPTIONS.items():
        command = commands.add_parser(
            name, help=summary, description=description, epilog=EXAMPLES[name], formatter_class=argparse.RawDescriptionHelpFormatter
        )
        command.add_argument("--input", action="append", required=True, metavar="PATH", help="input path or s3:// URI (repeatable)")
        command.add_argument("--output", required=True, metavar="PATH", help="output directory or s3:// prefix")
        command.add_argument("--config", metavar="FILE", help=f"YAML config (default: the packaged defaults, see configs/{name}.yaml)")
        command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. seed=3 (repeatable)")
        command.add_argument("--dry-run", action="store_true", help="validate and print the plan without running")
        command.add_argument("--print-config", action="store_true", help="print the resolved config and its hash, then exit")
        command.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
        command.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pairmine").setLevel(logging.DEBUG if args.verbose else logging.INFO)  # libraries stay at WARNING
    from .config import config_hash, load_config, to_yaml
    from .run import USER_ERRORS, plan_only, run
    from .summary import format_summary

    job = _jobs()[args.command]
    try:
        if args.print_config:
            config = load_config(job.config_model, args.config, args.set)
            print(to_yaml(config) + f"# config_hash: {config_hash(config)}")
            return 0
        if args.dry_run:
            print(json.dumps(plan_only(job, args.input, args.output, args.config, args.set), indent=2))
            return 0
        summary = run(job, args.input, args.output, args.config, args.set, progress_bars=not args.no_progress)
    except USER_ERRORS as exc:
        print(f"pairmine: error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
