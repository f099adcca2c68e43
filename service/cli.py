"""``posekd`` command line: serve, worker, models, bench, distill, eval, teachers."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .client.cli import add_pose_parser
from .errors import PoseKDError
from .logs import install_log_format
from .settings import get_settings


def _store(args):
    from .store import ModelStore
    return ModelStore(args.store or get_settings().model_store)


# ---- serve ------------------------------------------------------------------------------------
def cmd_serve(args) -> int:
    import uvicorn

    from .api import create_app
    from .api.server import protocol_with_head_timeout

    s = get_settings()
    host, port = args.host or s.host, args.port or s.port
    if args.access_log:
        s = s.model_copy(update={"access_log": args.access_log})
    app = create_app(s, handle_signals=True)
    # our own access log (with request ids) replaces uvicorn's
    uvicorn.run(app, host=host, port=port, log_level=s.log_level, access_log=False, log_config=None,
                limit_concurrency=s.max_connections, timeout_keep_alive=s.keepalive_timeout_s,
                http=protocol_with_head_timeout(s.header_timeout_s))
    return 0


def cmd_worker(args) -> int:
    from .worker import serve

    s = get_settings()
    if args.name:
        s = s.model_copy(update={"worker_name": args.name})
    if args.device_id is not None:
        s = s.model_copy(update={"cuda_device_id": args.device_id})
    return serve(s, args.metrics_port)


def cmd_video(args) -> int:
    if args.url:
        result = _video_through_service(args)
    else:
        from .video.offline import run

        result = run(get_settings(), Path(args.clip), None, Path(args.render) if args.render else None,
                     model=args.model, detector=args.detector, keyframe_interval=args.keyframe_interval,
                     smoothing=False if args.no_smoothing else None)
    document = result
    if args.format == "posetrack":
        from .formats import posetrack

        document = posetrack(result, video_id=1, name=Path(args.clip).stem)
    if args.output:
        Path(args.output).write_text(json.dumps(document, separators=(",", ":")))
    s = result["stats"]
    print(f"{result['video']['frames']} frames, {len(result['tracks'])} tracks, {s['fps']} frames/s, "
          f"keyframes {s['keyframe_ratio']:.0%}" + (f"; overlay {args.render} ({s['rendered_with']})" if args.render
                                                    else ""), file=sys.stderr)
    if not args.output:
        print(json.dumps(document))
    return 0


def _video_through_service(args) -> dict:
    """The same job through a running service (``--url``): upload, wait, fetch the overlay if asked."""
    from .client import Client

    client = Client(args.url, api_key=args.api_key)
    job = client.submit_video(args.clip, render=bool(args.render), model=args.model, detector=args.detector,
                              keyframe_interval=args.keyframe_interval, smoothing=False if args.no_smoothing else None)
    result = client.wait(job, timeout=None)
    if args.render:
        Path(args.render).write_bytes(client.overlay(job))
    return result.raw


# ---- models -----------------------------------------------------------------------------------
def cmd_models_list(args) -> int:
    store = _store(args)
    names = store.names()
    if not names:  # a script asking for models gets a failure, and where it looked
        print(f"the model store {store.root} is empty (POSEKD_MODEL_STORE or --store choose another). Fill it with\n"
              f"  posekd models import --teachers ../shared/teachers    (the MoveNet/CenterNet teachers)\n"
              f"  posekd models import MODEL.onnx --name NAME --task pose ...  (your own model)", file=sys.stderr)
        return 1
    print(f"{'name':24} {'task':17} {'versions':12} aliases")
    for name in names:
        versions = store.versions(name)
        try:
            task = store.manifest(name, versions[-1]).task
        except PoseKDError:
            task = "?"
        aliases = ", ".join(f"{a}={v}" for a, v in sorted(store.aliases(name).items()))
        print(f"{name:24} {task:17} {','.join(map(str, versions)):12} {aliases}")
    return 0


def cmd_models_show(args) -> int:
    from .store import ModelSpec
    store = _store(args)
    spec = ModelSpec.parse(args.model)
    version = store.resolve(spec, get_settings().default_alias)
    print(store.manifest(spec.name, version).model_dump_json(indent=2))
    return 0


def cmd_models_verify(args) -> int:
    store = _store(args)
    names = [args.name] if args.name else store.names()
    bad = 0
    for name in names:
        for v in store.versions(name):
            problem = store.verify(name, v)
            bad += problem is not None
            print(f"{name}:{v}  {'ok' if problem is None else 'FAILED: ' + problem}")
    return 1 if bad else 0


def cmd_models_promote(args) -> int:
    table = _store(args).set_alias(args.name, args.alias, args.version)
    print(f"{args.name}: {json.dumps(table, sort_keys=True)}  (running services pick it up on reload/SIGHUP)")
    return 0


def _fields_from_flags(args) -> dict:
    fields: dict = json.loads(Path(args.manifest).read_text()) if args.manifest else {}
    for key in ("name", "task", "description"):
        if getattr(args, key):
            fields[key] = getattr(args, key)
    inp = dict(fields.get("input", {}))
    if args.input_name:
        inp["name"] = args.input_name
    if args.size:
        h, _, w = args.size.partition("x")
        inp["height"], inp["width"] = int(h), int(w or h)
    for key in ("layout", "dtype"):
        if getattr(args, key):
            inp[key] = getattr(args, key)
    if args.raw_pixels:
        inp.update(scale=1.0, mean=[0, 0, 0], std=[1, 1, 1])
    fields["input"] = inp
    out = dict(fields.get("output", {}))
    if args.decoder:
        out["decoder"] = args.decoder
    if args.outputs:
        out["names"] = args.outputs.split(",")
    fields["output"] = out
    if "name" not in fields or "task" not in fields:
        raise PoseKDError("--name and --task (or a --manifest that has them) are required", status=2)
    if args.file and "name" not in inp:
        import onnxruntime as ort
        sess = ort.InferenceSession(args.file, providers=["CPUExecutionProvider"])
        first = sess.get_inputs()[0]
        inp["name"] = first.name
        dims = first.shape
        if "height" not in inp and len(dims) == 4 and all(isinstance(d, int) for d in dims[1:]):
            chw = dims[1] in (1, 3)
            inp.setdefault("layout", "NCHW" if chw else "NHWC")
            inp["height"], inp["width"] = (dims[2], dims[3]) if chw else (dims[1], dims[2])
    fields.setdefault("lineage", {}).setdefault("source", str(Path(args.file).resolve()))
    return fields


def cmd_models_import(args) -> int:
    from .store.importer import import_model, import_teachers

    store = _store(args)
    alias = None if args.no_alias else args.alias
    if args.teachers:
        tdir = Path(args.teachers)
        if not tdir.is_dir():
            print(f"no teachers folder at {tdir}; set POSEKD_TEACHERS or pass --teachers DIR", file=sys.stderr)
            return 1
        results = import_teachers(store, tdir, if_missing=args.if_missing)
        if not results:
            print(f"no known teacher files in {tdir}", file=sys.stderr)
            return 1
    else:
        if not args.file:
            print("give an ONNX file, or --teachers DIR", file=sys.stderr)
            return 2
        results = [import_model(store, args.file, _fields_from_flags(args), alias=alias, if_missing=args.if_missing)]
    for m, added in results:
        state = "added" if added else "already present"
        print(f"{m.name}:{m.version}  {m.task:17} {state}  sha256 {m.sha256[:12]}…")
    return 0


# ---- bench --------------------------------------------------------------------------------------
def cmd_bench(args, rest: list[str]) -> int:
    root = Path(__file__).resolve().parent.parent
    bench_dir = root / "bench"
    if not (bench_dir / "__init__.py").is_file():
        print(f"benchmarks live in {bench_dir}, which needs a source checkout", file=sys.stderr)
        return 2
    return _load_bench(bench_dir, args.what).main(rest)


def _load_bench(folder: Path, name: str):
    """``bench.<name>`` from the checkout's ``bench/`` folder, loaded as the package ``bench`` (it is not
    installed; the import search path stays as it is)."""
    import importlib
    import importlib.util
    if "bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench", folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {folder}")
        package = importlib.util.module_from_spec(spec)
        sys.modules["bench"] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"bench.{name}")


def _add_models_parser(sub) -> None:
    models = sub.add_parser("models", help="inspect and change the model store")
    models.add_argument("--store", help="store root (default POSEKD_MODEL_STORE or ./model_store)")
    msub = models.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="models, versions and aliases").set_defaults(func=cmd_models_list)
    show = msub.add_parser("show", help="print a manifest")
    show.add_argument("model", help="name, name:version or name@alias")
    show.set_defaults(func=cmd_models_show)
    verify = msub.add_parser("verify", help="check every file against its manifest's sha256")
    verify.add_argument("name", nargs="?", help="one model (default: all)")
    verify.set_defaults(func=cmd_models_verify)
    promote = msub.add_parser("promote", help="point an alias at a version")
    promote.add_argument("name", help="model name")
    promote.add_argument("version", type=int, help="the version the alias should point at")
    promote.add_argument("--alias", default="production", help="alias to move (default production)")
    promote.set_defaults(func=cmd_models_promote)
    imp = msub.add_parser("import", help="register an external ONNX file (or the teachers) as a new version")
    imp.add_argument("file", nargs="?", help="the ONNX file")
    imp.add_argument("--teachers", nargs="?", const=str(get_settings().teachers), metavar="DIR",
                     help="register the MoveNet/CenterNet teachers found in DIR (default POSEKD_TEACHERS)")
    imp.add_argument("--manifest", help="JSON with manifest fields (input, output, crop, lineage, ...)")
    imp.add_argument("--name", help="model name in the store (default: from --manifest or the file name)")
    imp.add_argument("--task", choices=["pose", "person_detection"], help="what the model does")
    imp.add_argument("--description", help="free text for the manifest")
    imp.add_argument("--input-name", help="the graph input to feed (default: read from the graph)")
    imp.add_argument("--size", help="HxW of the model input, e.g. 256x192")
    imp.add_argument("--layout", choices=["NCHW", "NHWC"], help="input tensor layout")
    imp.add_argument("--dtype", choices=["float32", "float16", "uint8", "int32"], help="input tensor type")
    imp.add_argument("--raw-pixels", action="store_true", help="feed 0-255 pixels (no scaling or mean/std)")
    imp.add_argument("--decoder", help="heatmap | movenet_heads | keypoints | multipose | centernet | boxes")
    imp.add_argument("--outputs", help="comma-separated output tensor names, in decoder order")
    imp.add_argument("--alias", default="production", help="alias to point at the new version (default production)")
    imp.add_argument("--no-alias", action="store_true", help="add the version without moving any alias")
    imp.add_argument("--if-missing", action="store_true", help="skip files already in the store (same sha256)")
    imp.set_defaults(func=cmd_models_import)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posekd", description="PoseKD pose-estimation service: keypoints for images, "
                                "tracked poses for clips, from distilled student models. Settings come from "
                                "POSEKD_* environment variables (see the README).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"posekd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service (embedded mode unless POSEKD_REDIS_URL is set)")
    serve.add_argument("--host", help="address to bind (default POSEKD_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default POSEKD_PORT, 8000)")
    serve.add_argument("--access-log", nargs="?", const="text", choices=["off", "text", "json"],
                       help="one log line per request, with its request id (default POSEKD_ACCESS_LOG, off; "
                            "the flag alone: text)")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="serve the Redis request stream (needs POSEKD_REDIS_URL)")
    worker.add_argument("--metrics-port", type=int, help="Prometheus port (default POSEKD_METRICS_PORT, 9100; 0: off)")
    worker.add_argument("--name", help="consumer name in the group (default POSEKD_WORKER_NAME or host-pid)")
    worker.add_argument("--device-id", type=int, help="CUDA device (default POSEKD_CUDA_DEVICE_ID)")
    worker.set_defaults(func=cmd_worker)

    add_pose_parser(sub)

    video = sub.add_parser("video", help="track the people of a clip offline (the video job's code)")
    video.add_argument("clip", help="the video file (MP4, MOV, AVI, WebM)")
    video.add_argument("-o", "--output", help="result JSON (default: stdout)")
    video.add_argument("--render", metavar="FILE", help="also write the overlay MP4 here")
    video.add_argument("--format", choices=("posekd", "posetrack"), default="posekd",
                       help="posekd: the job's JSON (default); posetrack: a PoseTrack/COCO document")
    video.add_argument("--url", help="run it through the service at this URL instead of in this process")
    video.add_argument("--api-key", default=None, help="API key for --url (default POSEKD_API_KEY)")
    video.add_argument("--model", help="pose model (default POSEKD_DEFAULT_POSE_MODEL)")
    video.add_argument("--detector", help="person detector (default POSEKD_DEFAULT_DETECTOR)")
    video.add_argument("--keyframe-interval", type=int, help="detect every K frames (1: every frame)")
    video.add_argument("--no-smoothing", action="store_true", help="raw keypoints (no One-Euro filter)")
    video.set_defaults(func=cmd_video)

    _add_models_parser(sub)

    bench = sub.add_parser("bench", help="benchmarks (bench/); results go to bench/RESULTS.md")
    bench.add_argument("what", choices=BENCHMARKS,
                       help="which benchmark; `posekd bench WHAT --help` for its options")
    bench.set_defaults(func=None)

    for register in _plugins():
        register(sub)
    return p


BENCHMARKS = ["images", "students", "people", "labels", "tracking", "shadow", "queue", "video", "soak", "runtime",
              "preprocess"]

# what `pip install 'posekd[train]'` adds (pyproject.toml's train extra), by import name
TRAIN_EXTRA_MODULES = {"torch", "onnx", "pycocotools", "tqdm", "matplotlib"}


def _plugins():
    """Commands other packages add to ``posekd`` (entry-point group ``posekd.commands``): the offline
    ``distill`` package registers ``distill``, ``eval`` and ``teachers`` this way, so the runtime never
    imports training code by name."""
    from importlib.metadata import entry_points

    found = []
    for ep in entry_points(group="posekd.commands"):
        try:
            found.append(ep.load())
        except ImportError as exc:  # a plugin whose dependencies are missing: its commands are absent
            logging.getLogger("posekd").debug("plugin %s not loaded: %s", ep.name, exc)
    return found


def _settings_problem() -> str | None:
    """Why the environment's POSEKD_ settings cannot be used, or None when they can."""
    from pydantic import ValidationError
    try:
        get_settings()
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    problem = _settings_problem()
    if problem:
        print(f"error: invalid POSEKD_ settings: {problem}", file=sys.stderr)
        return 2
    parser = build_parser()
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in BENCHMARKS:
        # everything after the benchmark's name is its own (its --help included), not the bench group's
        install_log_format(logging.INFO)
        return cmd_bench(argparse.Namespace(what=argv[1]), argv[2:])
    args, rest = parser.parse_known_args(argv)
    install_log_format(logging.DEBUG if args.verbose else logging.INFO)
    if args.command == "bench":
        return cmd_bench(args, rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    args.argv = list(argv)
    prepare = getattr(args, "prepare", None)
    if prepare is not None:
        prepare(args)
    try:
        return args.func(args)
    except PoseKDError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2 if exc.status == 2 else 1
    except ModuleNotFoundError as exc:  # a runtime-only install running a training command
        if (exc.name or "").split(".")[0] not in TRAIN_EXTRA_MODULES:
            raise
        print(f"error: `posekd {args.command}` needs the training extra (missing module {exc.name!r}): "
              f"pip install 'posekd[train]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
