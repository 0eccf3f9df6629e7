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
}


def _jobs():
    from .syn4removal import JOB as SYN4REMOVAL

    return {"syn4removal": SYN4REMOVAL}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pairmine",
        description="Mine (source, mask, target) training pairs for object-removal models, written as WebDataset shards.",
    )
    parser.add_argument("--version", action="version", version=f"pairmine {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    syn = commands.add_parser(
        "syn4removal",
        help="synthetic triplets: entities from segmented images pasted into other images",
        description="Syn4Removal (SmartEraser): cut entities out of SA-1B / COCO-panoptic images and paste "
        "them into other images at positions that bury no object, with feathered alpha blending; "
        "writes (source.jpg, mask.png, target.jpg, alpha.png, json) samples.",
        epilog=EXAMPLES["syn4removal"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    syn.add_argument("--input", action="append", required=True, metavar="PATH", help="input path or s3:// URI (repeatable)")
    syn.add_argument("--output", required=True, metavar="PATH", help="output directory or s3:// prefix")
    syn.add_argument("--config", metavar="FILE", help="YAML config (default: the packaged defaults, see configs/)")
    syn.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. seed=3 (repeatable)")
    syn.add_argument("--dry-run", action="store_true", help="validate and print the plan without running")
    syn.add_argument("--print-config", action="store_true", help="print the resolved config and its hash, then exit")
    syn.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    syn.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
