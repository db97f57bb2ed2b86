"""The `clipmill` command line: one door onto the stage runner (and a few helpers)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tasks.base import ParamsError, StageError
from tasks.registry import STAGES, UnknownStageError, get_stage


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipmill", description="Turn raw web data into CLIP models."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one stage")
    run.add_argument("stage", help=f"one of: {', '.join(STAGES)}")
    run.add_argument("-p", "--params", help="params YAML (default: params/STAGE.yaml)")
    run.add_argument(
        "-s", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a param"
    )
    run.add_argument(
        "--door", default="cli", choices=["cli", "dvc", "prefect", "python"], help=argparse.SUPPRESS
    )

    params = sub.add_parser("params", help="inspect and validate parameters")
    psub = params.add_subparsers(dest="params_command", required=True)
    show = psub.add_parser("show", help="print the effective values of a stage's params")
    show.add_argument("stage")
    show.add_argument("-p", "--params")
    show.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE")
    psub.add_parser("check", help="validate every params file")

    sub.add_parser("stages", help="list the stages in pipeline order")

    lineage = sub.add_parser(
        "lineage", help="where a run or model version came from: evaluation -> ... -> crawl"
    )
    lineage.add_argument("ref", help="an MLflow run id, or a model version NAME/VERSION")
    lineage.add_argument("--json", action="store_true", help="print the tree as JSON")

    browse = sub.add_parser("browse", help="a web page over the LanceDB pool (127.0.0.1)")
    browse.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    browse.add_argument("--port", type=int, default=0, help="0 = a free port (printed)")
    browse.add_argument(
        "--model",
        default=None,
        help="CLIP model for text search (registry models:/NAME/VERSION, a folder; default: "
        "the one curate embedded the pool with)",
    )
    browse.add_argument("--lancedb", default=None, help="LanceDB URI (default: the settings')")
    browse.add_argument("--crawl-dir", default="data/crawl", help="folder the pool's shards are in")
    browse.add_argument("--page-size", type=int, default=24, help="thumbnails per page")

    serve = sub.add_parser("serve-sample", help="serve the sample website on 127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 = a free port")
    serve.add_argument("--dir", default=None, help="site folder (default: from params/sample.yaml)")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from tasks.runner import run_stage

    # SIGTERM (an orchestrator's cancel, `kill`) raises SystemExit, so every stage's `finally`
    # and cleanup blocks run: temporary files are removed, nothing is left half-written. Stages
    # that start Ray set the same handler (tasks/raysession.py); local ones would otherwise die
    # on the spot. In-process callers (tests, another thread) get their own handler back.
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main_thread else None
    if main_thread:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        metrics = run_stage(args.stage, args.params, args.set, door=args.door)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)
    print(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    from tasks.runner import load_stage_params

    if args.params_command == "check":
        for name, spec in STAGES.items():
            load_stage_params(spec)
            print(f"{name}: {spec.params_file.name} ok")
        return 0
    params = load_stage_params(get_stage(args.stage), args.params, args.set)
    print(params.to_yaml(), end="")
    return 0


def _default_site_dir() -> Path:
    """<out_dir>/site, out_dir from params/sample.yaml (the model's default if the file is absent).

    Found through the registry, here in the door, so the sample stage's server needs no registry.
    """
    from tasks.io.paths import resolve_path

    spec = get_stage("sample")
    model = spec.model()
    params = model.from_yaml(spec.params_file) if spec.params_file.exists() else model()
    return resolve_path(params.model_dump()["out_dir"]) / "site"


def _cmd_serve(args: argparse.Namespace) -> int:
    from tasks.io.serve import serve_forever

    serve_forever(args.dir if args.dir is not None else _default_site_dir(), args.port)
    return 0


def _cmd_lineage(args: argparse.Namespace) -> int:
    from tasks.lineage import lineage

    tree = lineage(args.ref)
    print(json.dumps(tree.to_dict(), indent=2) if args.json else tree.render())
    return 0


def _cmd_browse(args: argparse.Namespace) -> int:
    from tasks.browse.server import serve
    from tasks.io.paths import resolve_path

    serve(
        args.lancedb,
        resolve_path(args.crawl_dir),
        args.model,
        host=args.host,
        port=args.port,
        page_size=args.page_size,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "params":
            return _cmd_params(args)
        if args.command == "stages":
            print("\n".join(STAGES))
            return 0
        if args.command == "serve-sample":
            return _cmd_serve(args)
        if args.command == "lineage":
            return _cmd_lineage(args)
        if args.command == "browse":
            return _cmd_browse(args)
    except (ParamsError, UnknownStageError) as exc:
        print(f"clipmill: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, PermissionError, StageError) as exc:
        # A stage refusing its input (missing shards, unknown model, corrupt checkpoint...):
        # the message names the input; the traceback only helps when debugging clipmill itself.
        if os.environ.get("CLIPMILL_DEBUG"):
            raise
        print(f"clipmill: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("clipmill: (set CLIPMILL_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return 1


def entry() -> None:
    """The `clipmill` console script: main(), then a fast exit.

    By the time main() returns, every stage has closed its engines (MLflow run ended, LanceDB
    and files written, Ray told to shut down: see raysession.exit_follows_session) and the
    result is printed. What is left is CPython tearing down thousands of modules (Ray, MLflow,
    LanceDB, pandas...), which takes a second or more; os._exit skips it after flushing.
    In-process callers (tests, the flow) use main().
    """
    from tasks.raysession import exit_follows_session

    exit_follows_session()
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
