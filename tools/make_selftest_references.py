"""Write the start-up self-test's reference outputs beside each model card.

For every card in engines/ (or those named), ONNX Runtime fp32 on the CPU runs the full model
on the self-test windows (the first windows of the bundled clip, `streamclf.backends.selftest`)
and the tags go to `engines/selftest/<model>.json`, with the ONNX file's sha256 they belong to.
Re-run it whenever a model file or the front end changes:

    .venv/bin/python tools/make_selftest_references.py            # every packaged model
    .venv/bin/python tools/make_selftest_references.py MSD_musicnn
"""

from __future__ import annotations

import argparse
import json
import sys

from streamclf.backends.runner import FullWindowRunner, load_engine
from streamclf.backends.selftest import (
    reference_document,
    reference_path,
    run_self_test,
    self_test_windows,
)
from streamclf.models.card import ENGINES_DIR, load_model_card

COMMAND = "python tools/make_selftest_references.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="model names or card paths (default: all)")
    args = parser.parse_args(argv)
    names = args.models or sorted(p.stem for p in ENGINES_DIR.glob("*.json"))
    windows = self_test_windows()
    for name in names:
        card = load_model_card(name)
        runner = FullWindowRunner(load_engine(card, "onnxruntime", max_batch=1, threads=1))
        try:
            tags = run_self_test(runner, windows)["tags"]
        finally:
            runner.close()
        path = reference_path(card)
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(reference_document(card, tags, command=COMMAND), indent=1)
                        + "\n")
        print(f"{path}: {tags.shape[0]} windows × {tags.shape[1]} tags")
    return 0


if __name__ == "__main__":
    sys.exit(main())
