"""Command-line interface: argument parsing only; each command calls one function elsewhere.

Exit codes (docs/cli.md): 0 ok, 1 internal error, 2 usage or config error, 3 audio input error,
4 model error, 5 engine error, 6 feed error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from streamclf import __version__
from streamclf.errors import EXIT_INTERRUPTED, ConfigError, StreamclfError
from streamclf.logs import configure_logging

EXIT_INTERNAL = 1


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("audio source (one of; default: the config's streams)")
    pick = src.add_mutually_exclusive_group()
    pick.add_argument("--device", help="input device: index or a substring of its name")
    pick.add_argument("--file", type=Path, help="audio file (WAV/FLAC/OGG/MP3), paced in real time")
    pick.add_argument("--url", help="anything ffmpeg reads: http(s)/Icecast, rtsp, srt, a file")
    pick.add_argument("--stdin", action="store_true", help="raw PCM on standard input")
    pick.add_argument("--demo", action="store_true", help="the bundled music clip, looped")
    src.add_argument("--channel", help="'mean' (default) or a 0-based channel to pick")
    src.add_argument("--loop", action="store_true", help="loop --file")
    src.add_argument("--fast", action="store_true", help="read --file as fast as possible")
    src.add_argument("--format", dest="stdin_format", choices=["s16le", "f32le"], default="s16le",
                     help="--stdin sample format (default s16le)")
    src.add_argument("--rate", dest="stdin_rate", type=int, default=44100,
                     help="--stdin sample rate in Hz (default 44100)")
    src.add_argument("--channels", dest="stdin_channels", type=int, default=2,
                     help="--stdin channel count (default 2)")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model name in engines/ or path to an .onnx file")
    parser.add_argument("--engine", choices=["auto", "onnxruntime", "tensorrt", "torch"],
                        help="inference engine (default from config: auto)")
    parser.add_argument("--cpu-precision", choices=["auto", "fp32", "int8"],
                        help="ONNX Runtime's incremental runner: int8 frame graph, or auto "
                             "(int8 where measured faster: no CPU so far); default from "
                             "config: fp32")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamclf",
        description="Real-time music genre classification of live audio, "
                    "published on a ZeroMQ feed.",
        epilog="Exit codes: 0 ok, 1 internal error, 2 usage/config, 3 audio input, 4 model, "
               "5 engine, 6 feed, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"streamclf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (stderr)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("listen", help="classify live audio in the foreground with a live view",
                       description="Run the pipeline in the foreground: a live view on a terminal, "
                                   "one line per window otherwise; publishes on the feed too.")
    p.add_argument("--config", type=Path, help="TOML config (default: built-in defaults)")
    _add_source_args(p)
    _add_model_args(p)
    p.add_argument("--hop", type=float, help="seconds between windows (default 1.0)")
    p.add_argument("--endpoint", help="feed endpoint to bind (default tcp://127.0.0.1:5556)")
    p.add_argument("--no-publish", action="store_true", help="do not bind the ZeroMQ feed")
    p.add_argument("--json", action="store_true", help="JSON lines instead of the live view")
    p.add_argument("--duration", type=float,
                   help="stop after running this many seconds (start-up not counted)")

    p = sub.add_parser("serve", help="run the daemon (systemd Type=notify)",
                       description="Run the daemon: structured logs, sd_notify "
                                   "READY/WATCHDOG/STATUS, SIGHUP reloads the config, "
                                   "SIGTERM stops cleanly.")
    p.add_argument("--config", type=Path, required=True, help="TOML config file")
    p.add_argument("--duration", type=float,
                   help="stop after running this many seconds (start-up not counted)")

    p = sub.add_parser("classify", help="tag audio files offline",
                       description="Tag files through the same framer and engine as the daemon: "
                                   "per-window tags and a track summary. A folder stands for its "
                                   "audio files; an unreadable file is one error line, the rest "
                                   "are still tagged, and the exit code is then 3.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE|DIR")
    _add_model_args(p)
    p.add_argument("--window", type=float, default=3.0, help="window in seconds (default 3)")
    p.add_argument("--hop", type=float, default=3.0,
                   help="hop in seconds (default 3: musicnn's own non-overlapping patches)")
    p.add_argument("--top-k", type=int, default=5, help="tags per window (default 5)")
    p.add_argument("--genres", help="comma-separated tags to pick the genre from "
                                    "(default: the model card's genre vocabulary)")
    p.add_argument("--json", action="store_true", help="JSON output (schema in docs/classify.md)")
    p.add_argument("--plot", type=Path, metavar="PNG", help="draw the taggram into this PNG")

    p = sub.add_parser("subscribe", help="print messages from a streamclf feed")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5556", help="feed endpoint to connect")
    p.add_argument("--topic", default="", help="topic prefix, e.g. genre. or status.main")
    p.add_argument("--count", type=int, help="stop after N messages")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--timeout", type=float,
                   help="give up (exit 6) after this many seconds without a message")
    p.add_argument("--server-key", help="CURVE: the server's public key file")
    p.add_argument("--client-key", default="",
                   help="CURVE: our own secret key file (default: a throwaway key pair)")

    p = sub.add_parser("devices", help="list audio input devices")
    p.add_argument("--json", action="store_true", help="JSON output")

    p = sub.add_parser("engine", help="build and list TensorRT plans")
    esub = p.add_subparsers(dest="engine_command", metavar="ACTION", required=True)
    b = esub.add_parser("build", help="build TensorRT plans ahead of time")
    b.add_argument("--model", action="append", help="model(s) to build (default: the config's)")
    b.add_argument("--precision", choices=["fp16", "fp32"], default="fp16")
    b.add_argument("--max-batch", type=int, default=32)
    b.add_argument("--cache-dir", type=Path, help="plan cache directory")
    i = esub.add_parser("info", help="list cached plans and what they were built for")
    i.add_argument("--cache-dir", type=Path, help="plan cache directory")

    p = sub.add_parser("model", help="import the musicnn models")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    m = msub.add_parser("import", help="convert musicnn checkpoints (wheel or folder) to ONNX")
    m.add_argument("source", type=Path, help="musicnn-0.1.0 wheel or its extracted folder")
    m.add_argument("--out", type=Path, default=Path("engines"),
                   help="output folder (default engines/)")
    m.add_argument("--name", action="append", help="model(s) to import (default: all four)")

    p = sub.add_parser("evaluate", help="measure a model's genre calls on a labelled dataset",
                       description="Accuracy, per-class precision/recall/F1, macro-F1 and a "
                                   "confusion matrix on a dataset, beside the zero-shot "
                                   "baselines (docs/model-quality.md, docs/training.md). A folder "
                                   "the model never fitted on is scored whole; files of a class "
                                   "the model cannot name are reported, not scored.")
    p.add_argument("paths", nargs="+", metavar="[MODEL] DATASET",
                   help="a trained head (.onnx) or a model name, then a dataset (FOLDER/<class>/"
                        "*.ogg|flac|wav|mp3, a CSV, or a folder with manifest.csv); without "
                        "MODEL the fused default")
    p.add_argument("--split", help="score this split (train, val, test) or 'all' (default: every "
                                   "file, or the test split of a folder that declares splits or "
                                   "that the model was fitted on)")
    p.add_argument("--threshold", type=float,
                   help="unknown threshold (fused model: default the card's; trained heads: "
                        "default 0; refused for a single tagger's zero-shot scores)")
    p.add_argument("--max-windows", type=int, help="at most this many windows per file")
    p.add_argument("--engine", choices=["auto", "onnxruntime", "tensorrt", "torch"],
                   help="trained heads: any; stock models: onnxruntime (auto means it)")
    p.add_argument("--cache-dir", type=Path, help="embedding cache (trained heads only)")
    p.add_argument("--out-dir", type=Path,
                   help="write confusion PNGs and JSON here (trained heads only)")
    p.add_argument("--plot", type=Path, metavar="PNG",
                   help="confusion matrix picture (fused or trained model, per window)")
    p.add_argument("--json", action="store_true", help="JSON output")

    p = sub.add_parser("train", help="train a genre head on your own labelled music",
                       description="Train a head on frozen musicnn embeddings and export it, "
                                   "with musicnn, as one ONNX model the daemon loads "
                                   "(docs/training.md).")
    p.add_argument("dataset", type=Path, help="a folder of class folders, a CSV "
                                              "(path,label[,split,artist]), or with --labels-from "
                                              "tags any folder of tagged music")
    p.add_argument("--labels-from", choices=["layout", "tags"], default="layout",
                   help="layout: class folders or the CSV's label column (default); tags: each "
                        "file's GENRE tag, split by its ARTIST tag")
    p.add_argument("--genre-map", type=Path, metavar="TOML",
                   help='with --labels-from tags: your genre names onto classes, '
                        'lines like "Top 40" = "pop" (default: each genre is a class)')
    p.add_argument("--out", type=Path, help="the .onnx to write (default DATASET-HEAD.onnx)")
    p.add_argument("--head", choices=["linear", "mlp", "attention"], default="mlp")
    p.add_argument("--hidden", type=int, default=128, help="MLP/attention width (default 128)")
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--segment", type=int, default=4, help="windows pooled per training example")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.003, help="learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", type=int, default=2, help="augmented copies per training file")
    p.add_argument("--snr-db", type=float, default=15.0, help="lowest SNR of the added noise")
    p.add_argument("--val-share", type=float, default=0.2)
    p.add_argument("--test-share", type=float, default=0.2)
    p.add_argument("--ignore-splits", action="store_true", help="ignore a CSV's split column")
    p.add_argument("--base", default="MSD_musicnn",
                   help="the frozen musicnn model (default MSD_musicnn)")
    p.add_argument("--engine", choices=["auto", "onnxruntime", "tensorrt", "torch"])
    p.add_argument("--hop", type=float, default=3.0, help="seconds between training windows")
    p.add_argument("--cache-dir", type=Path, help="embedding cache directory")

    p = sub.add_parser("bench", help="measure speed, latency, capacity and memory")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.add_argument("--quick", action="store_true", help="shorter runs (less precise)")
    p.add_argument("--write", type=Path, help="also write the markdown report here")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    """Import lazily so that `--help` and light commands start fast and never load torch."""
    if args.command in ("listen", "serve"):
        from streamclf import service

        return service.run(args)
    if args.command == "classify":
        from streamclf import classify

        return classify.run(args)
    if args.command == "subscribe":
        from streamclf.feed.subscriber import CurveClient, run_subscribe

        curve = CurveClient(args.server_key, args.client_key) if args.server_key else None
        return run_subscribe(args.endpoint, args.topic, args.count, args.json,
                             timeout_s=args.timeout, curve=curve)
    if args.command == "devices":
        from streamclf.audio.devices import print_input_devices

        return print_input_devices(as_json=args.json)
    if args.command == "engine":
        from streamclf.backends import commands

        return commands.run(args)
    if args.command == "model":
        from streamclf.models.importer import import_models

        for card_path in import_models(args.source, args.out, names=args.name):
            print(card_path)
        return 0
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "train":
        from streamclf.train.commands import run_train

        return run_train(args)
    if args.command == "bench":
        from streamclf.bench.report import run

        return run(args)
    msg = f"unknown command {args.command!r}"
    raise ConfigError(msg)


def _evaluate(args: argparse.Namespace) -> int:
    """A trained head is scored on its own classes, the stock models on the genre families."""
    if len(args.paths) > 2:
        msg = "evaluate takes [MODEL] DATASET"
        raise ConfigError(msg)
    args.model, args.dataset = (None, *args.paths) if len(args.paths) == 1 else args.paths
    if args.max_windows is not None and args.max_windows < 1:
        msg = f"--max-windows must be at least 1, not {args.max_windows}"
        raise ConfigError(msg)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        msg = f"--threshold must be between 0 and 1, not {args.threshold}"
        raise ConfigError(msg)
    from streamclf.train.evaluation import is_trained_head

    if args.model is not None and is_trained_head(args.model):
        from streamclf.train.commands import run_evaluate_head

        return run_evaluate_head(args)
    from streamclf.evaluate import run_evaluate

    return run_evaluate(args)


class InterruptWatch:
    """Ctrl-C raised as KeyboardInterrupt, and remembered: an interrupt that lands inside a C
    extension's import (onnxruntime's) surfaces as `ImportError: initialization failed`, which
    must still exit 130 rather than read as a bug."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, _signum, _frame) -> None:
        self.seen = True
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    configure_logging("info" if args.verbose else "warning")
    interrupt = InterruptWatch()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when ignored (`&`)
        signal.signal(signal.SIGINT, interrupt)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except StreamclfError as exc:
        if interrupt.seen:
            return EXIT_INTERRUPTED
        print(f"streamclf: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 — a bug: one line for the user, the traceback with -v
        if interrupt.seen:
            return EXIT_INTERRUPTED
        if args.verbose:
            traceback.print_exc()
        print(f"streamclf: internal error: {type(exc).__name__}: {exc} "
              "(run with -v for the traceback, and please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
