"""`streamclf engine build|info`: build TensorRT plans ahead of time, list the cached ones."""

from __future__ import annotations

import argparse
import datetime

from streamclf.backends.plans import default_plan_dir, list_plans


def run(args: argparse.Namespace) -> int:
    cache_dir = args.cache_dir or default_plan_dir()
    if args.engine_command == "build":
        from streamclf.backends.trt_build import build_plans
        from streamclf.models.card import DEFAULT_MODEL, load_model_card

        cards = [load_model_card(name) for name in (args.model or [DEFAULT_MODEL])]
        for path in build_plans(
            cards, cache_dir=cache_dir, precisions=[args.precision], max_batch=args.max_batch
        ):
            print(path)
        return 0
    records = list_plans(cache_dir)
    print(f"{len(records)} plan(s) in {cache_dir}")
    for record in records:
        key = record.key
        built = datetime.datetime.fromtimestamp(record.built_at).isoformat(timespec="seconds")
        what = (
            f"{key.model} {key.precision} batch {key.min_batch}..{key.max_batch} "
            f"(opt {key.opt_batch}), TensorRT {key.tensorrt_version}, {key.gpu_name} "
            f"sm_{key.compute_capability.replace('.', '')}, "
            f"built {built} in {record.build_s:.0f} s, {record.size_bytes / 1e6:.1f} MB"
            if key
            else "unknown"
        )
        print(f"{record.path.name}: {what}" + (f" [{record.problem}]" if record.problem else ""))
    return 0
