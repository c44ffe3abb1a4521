"""``prunekit`` command line: a thin layer over :mod:`prunekit.workflow`.

Every command takes the same flag names (``--model NAME --data NAME --seed S --out DIR``). Errors
print as one line and exit non-zero; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from prunekit import data as pk_data
from prunekit import measure, workflow
from prunekit import models as pk_models
from prunekit.configs import add_config_args, config_from_args
from prunekit.errors import ConfigError
from prunekit.graph import explain
from prunekit.tables import markdown_table
from prunekit.train import TrainConfig, shutdown

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _common(p: argparse.ArgumentParser, *, model: bool = True, data: bool = True) -> None:
    if model:
        p.add_argument(
            "--model", default="resnet20", metavar="NAME", help="model name (default: resnet20)"
        )
    if data:
        p.add_argument(
            "--data", default="digits", metavar="NAME", help="data set name (default: digits)"
        )
        p.add_argument(
            "--root", default=None, metavar="DIR", help="folder holding the data set's files"
        )
        p.add_argument(
            "--image-size",
            type=int,
            default=None,
            metavar="N",
            help="input size (default: the model's)",
        )
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide progress bars"
    )


def cmd_train(args: argparse.Namespace) -> None:
    job = workflow.TrainJob(
        model=args.model, data=args.data, root=args.root, image_size=args.image_size
    )
    config = config_from_args(TrainConfig, args)
    metrics = workflow.train_model(
        job, config, out=args.out, progress=args.progress, overwrite=args.overwrite
    )
    rows = [
        [k, metrics[k]]
        for k in ("test_top1", "val_top1", "params", "macs", "bytes", "train_time_s")
    ]
    print(markdown_table(["metric", "value"], rows))
    print(f"saved to {metrics['out']}")


def cmd_eval(args: argparse.Namespace) -> None:
    res = workflow.evaluate_checkpoint(
        args.checkpoint, args.data, root=args.root, split=args.split, image_size=args.image_size
    )
    keys = [k for k in ("top1", "top5", "loss", "n") if k in res]
    print(markdown_table(["split", *keys], [[args.split, *(res[k] for k in keys)]]))


def _info_model(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """The model ``info`` describes, an example input and a one-line description: a registered
    model fitted to a data set, or (with ``--input-shape``) a registered model or any importable
    ``package.module:factory`` built for that input."""
    if args.input_shape is None:
        if pk_models.is_factory_spec(args.model):
            raise ConfigError(
                f"--model {args.model}: an importable factory needs --input-shape "
                "(batch, channels, sizes), e.g. --input-shape 1,3,32,32"
            )
        setup = workflow.prepare(
            args.model, args.data, root=args.root, image_size=args.image_size, augment=False
        )
        info = setup.info
        what = f"{args.model} on {info.name}: input {tuple(info.input_shape)}, {info.num_classes} classes"
        return setup.model, setup.example_input(), what
    import torch

    shape = pk_models.parse_input_shape(args.input_shape)
    if pk_models.is_factory_spec(args.model):
        model = pk_models.load_factory(args.model)
    else:
        model = pk_models.create(args.model, in_channels=shape[1], input_size=shape[2:])
    example = torch.randn(shape)
    try:
        with torch.no_grad():
            model.eval()(example)
    except Exception as exc:
        raise ConfigError(
            f"--model {args.model} does not run on an input of shape {shape} "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
            "check --input-shape"
        ) from exc
    return model, example, f"{args.model}: input {shape}"


def cmd_info(args: argparse.Namespace) -> None:
    model, example, what = _info_model(args)
    rows = measure.layer_table(model, example)
    protected = set(pk_models.protected_layers(model))
    table = [
        [r.name + (" *" if r.name in protected else ""), r.kind, r.params, r.flops // 2, r.flops]
        for r in rows
    ]
    params = measure.count_params(model)
    flops = measure.count_flops(model, example)
    table.append(["total", "", params.total, flops.macs, flops.flops])
    print(what)
    print(markdown_table(["layer", "type", "params", "MACs", "FLOPs"], table))
    print("* protected: never pruned on its output side")
    print_diagnosis(explain(model, example))


def _shown(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n})" if len(names) > n else "")


def print_diagnosis(report: Any) -> None:
    """What :func:`prunekit.graph.explain` found: the groups, every pinned set of channels with
    its reason, the submodules kept whole, or the refusal with its fix."""
    if report.refusal is not None:
        print(f"\nthe channel graph refuses this model: {report.refusal}")
        if report.fix:
            print(f"fix: {report.fix}")
        return
    rows = [
        [g.name, g.size, len(g.layers), _shown(g.layers) + ("" if g.exact else " (inexact)")]
        for g in report.groups
    ]
    print(f"\n{len(report.groups)} channel groups (channels removed together):")
    print(markdown_table(["group", "channels", "layers", "members"], rows))
    if report.pinned:
        rows = [[p.units, p.reason, _shown(p.layers)] for p in report.pinned]
        print(
            f"\n{sum(p.units for p in report.pinned)} pinned channels (never removed), by reason:"
        )
        print(markdown_table(["channels", "reason", "layers"], rows))
    if report.opaque:
        rows = [[name, why] for name, why in report.opaque.items()]
        print("\nkept whole (run as one opaque layer; its channels are pinned):")
        print(markdown_table(["layer", "why"], rows))


def cmd_list(args: argparse.Namespace) -> None:
    if args.what in ("models", "all"):
        rows = []
        for name in pk_models.list_models():
            info = pk_models.model_info(name)
            rows.append([name, "x".join(map(str, info.input_size)), info.family, info.paper])
        print(markdown_table(["model", "input", "family", "paper"], rows))
    if args.what in ("data", "all"):
        print(markdown_table(["data set"], [[n] for n in pk_data.list_datasets()]))


def cmd_demo(args: argparse.Namespace) -> None:
    config = config_from_args(workflow.PruneConfig, args)  # --target-params wins over flops
    measure.use_allocator(args.allocator)
    metrics = workflow.run_pruning(
        config, out=args.out, progress=args.progress, overwrite=args.overwrite
    )
    print(workflow.demo_table(metrics))
    for warning in metrics.get("warnings", []):
        print(f"prunekit: warning: {warning}", file=sys.stderr)
    if args.out:
        print(f"metrics and model saved to {args.out}")


def cmd_methods(args: argparse.Namespace) -> None:
    from prunekit import methods

    if args.show:
        print(_method_card(args.show))
        return
    listing = methods.list_methods()
    rows = [
        [e.id, e.type, status, e.title, f"{e.venue} {e.year or ''}".strip()]
        for e, status in listing
        if (not args.type or e.type == args.type)
        and (not args.implemented or status == "implemented")
    ]
    print(markdown_table(["id", "type", "status", "paper", "venue"], rows))
    done = sum(1 for _, status in listing if status == "implemented")
    print(f"{done} of {len(listing)} catalogue methods implemented; planned ones refuse to run")


def _method_card(method_id: str) -> str:
    """One method: its citation, status, summary and options with their defaults."""
    import inspect

    from prunekit import methods

    e = methods.entry(method_id)  # an unknown id lists the catalogue's
    lines = [f"{e.id} ({e.type}): {e.title}, {e.venue} {e.year or ''}".rstrip(), e.link or ""]
    if e.id not in methods.METHODS:
        lines.append("status: planned (not runnable yet)")
        return "\n".join(lines)
    cls = methods.METHODS.get(e.id)
    lines += [
        "status: implemented",
        "",
        inspect.getdoc(cls) or "",
        "",
        "options (--option KEY=VALUE):",
    ]
    rows = [
        [o.name, o.type, repr(o.default), o.bounds, o.help, o.source]
        for o in cls.options_class().describe()
    ]
    lines.append(markdown_table(["option", "type", "default", "bounds", "help", "source"], rows))
    return "\n".join(lines)


def cmd_compress(args: argparse.Namespace) -> None:
    """Deep Compression of a saved model: weight sharing by k-means per layer, Huffman-coded
    indices and relative positions of the non-zeros, written as one file."""
    from prunekit import load
    from prunekit.compress import deep_compression as dc

    model = load(args.model_file)
    report = dc.compress_model(
        model,
        args.out,
        bits_conv=args.bits_conv,
        bits_fc=args.bits_fc,
        gap_bits_conv=args.gap_bits_conv,
        gap_bits_fc=args.gap_bits_fc,
        value_dtype=args.value_dtype,
        seed=args.seed,
    )
    print(
        f"{args.out}: {report.bytes_written:,} bytes; fp32 dense {report.dense_bytes:,} bytes; "
        f"{report.ratio:.1f}x smaller"
    )


def cmd_bench_run(args: argparse.Namespace) -> None:
    """Run every (model, data, method, target, seed) of a spec; finished runs are skipped."""
    from prunekit.bench import load_spec, run_spec
    from prunekit.errors import one_line

    spec = load_spec(args.spec)
    summary = run_spec(
        spec,
        args.store,
        workers=args.workers,
        threads=args.threads,
        work_dir=args.work_dir,
        progress=args.progress,
        reuse=args.reuse,
    )
    print(
        f"{spec.name}: {summary.total} runs; {summary.skipped_done} already done, "
        f"{summary.ran} run now, {summary.failed} failed; store {summary.store}"
    )
    for label, error in summary.failures:
        print(f"failed: {label}: {one_line(error)}")
    if summary.failed:
        raise RuntimeError(
            f"{summary.failed} run(s) failed (errors above, and in {summary.store}); "
            "run the same command again to retry them"
        )


def cmd_bench_report(args: argparse.Namespace) -> None:
    """Tables, plots and the paper-vs-ours table of one or more stores (shards are merged)."""
    from prunekit.bench.report import report_from_stores

    files = report_from_stores(args.stores, args.out, title=args.title)
    print(f"{files.html}\n{files.markdown}")


def _example_from_file(model: Any, shape: str | None) -> Any:
    """An input for ``model``: ``--input-shape B,C,H,W`` (batch first, as ``prunekit info``
    reads it), else one sample of the input the file's architecture record names."""
    import torch

    if shape is not None:
        return torch.randn(*pk_models.parse_input_shape(shape))
    kwargs = (getattr(model, "prunekit_arch", None) or {}).get("kwargs", {})
    size, channels = kwargs.get("input_size"), kwargs.get("in_channels")
    if size is None or channels is None:
        from prunekit.errors import ConfigError

        raise ConfigError(
            "the model file does not record its input size; give --input-shape B,C,H,W "
            "(batch first), e.g. 1,3,32,32"
        )
    return torch.randn(1, channels, *([size] if isinstance(size, int) else size))


def cmd_export(args: argparse.Namespace) -> None:
    """ONNX export of a saved model, checked against PyTorch, with onnxruntime latency."""
    from prunekit import load
    from prunekit.export import check_onnx, export_onnx, onnx_latency

    model = load(args.model_file)
    example = _example_from_file(model, args.input_shape)
    path = export_onnx(model, example, args.out)
    diff = check_onnx(path, model, example)
    print(f"{path}: written; max |onnxruntime - torch| = {diff:.2e}")
    if args.latency:
        ms = onnx_latency(path, example, batch_sizes=tuple(args.batch_sizes), threads=args.threads)
        for n, t in sorted(ms.items()):
            print(f"onnxruntime latency, batch {n}: {t:.3f} ms ({args.threads} thread(s))")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunekit", description="Prune convolutional networks, measure and compare them."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, text in (
        ("demo", "train ResNet-20 on the bundled digits, prune half its FLOPs, fine-tune, report"),
        ("prune", "train a baseline, prune it with a method to a target, fine-tune, report"),
    ):
        p = sub.add_parser(name, help=text)
        add_config_args(p, workflow.PruneConfig)
        p.add_argument(
            "--out", default=None, metavar="DIR", help="write metrics.json and the model"
        )
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace the run --out holds when it is another run (default: refuse)",
        )
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
        p.add_argument(
            "--no-progress", dest="progress", action="store_false", help="no progress bars"
        )
        p.add_argument(
            "--allocator",
            choices=measure.ALLOCATORS,
            default="steady",
            help="steady (default): freed memory stays with the process, so a model's passes "
            "do not fault their pages in afresh and latencies time the compute "
            "(prunekit.measure.keep_freed_memory); default: the C library's malloc as it is",
        )
        p.set_defaults(func=cmd_demo)

    p = sub.add_parser("methods", help="the method catalogue with each entry's status")
    p.add_argument("--type", choices=["S", "U"], default=None, help="structured or unstructured")
    p.add_argument("--implemented", action="store_true", help="only the runnable ones")
    p.add_argument("--show", metavar="ID", default=None, help="one method's paper and options")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("compress", help="Deep Compression of a saved model into one small file")
    p.add_argument("model_file", help="a model saved by prunekit (e.g. a run's pruned.pt)")
    p.add_argument("out", help="the compressed file to write (prunekit.load reads it)")
    p.add_argument("--bits-conv", type=int, default=8, help="index bits per conv weight")
    p.add_argument("--bits-fc", type=int, default=5, help="index bits per Linear weight")
    p.add_argument("--gap-bits-conv", type=int, default=8, help="relative-position bits, conv")
    p.add_argument("--gap-bits-fc", type=int, default=5, help="relative-position bits, Linear")
    p.add_argument("--value-dtype", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("export", help="ONNX export of a saved model, checked and timed")
    p.add_argument("model_file", help="a model saved by prunekit (e.g. a run's pruned.pt)")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument(
        "--input-shape",
        default=None,
        metavar="B,C,H,W",
        help="input shape with the batch first, e.g. 1,3,32,32, as prunekit info reads it "
        "(default: one sample of the size the file records)",
    )
    p.add_argument("--latency", action="store_true", help="time it under onnxruntime")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], metavar="N")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=cmd_export)

    bench = sub.add_parser("bench", help="benchmark specs: run them, report on them")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="ACTION")
    p = bench_sub.add_parser(
        "run", help="run a YAML spec into a result store (rerun: skips finished runs)"
    )
    p.add_argument("spec", help="a YAML spec (see benchmarks/specs/)")
    p.add_argument("--store", default="results.sqlite", help="SQLite result store to write")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per worker (default: cores/workers)",
    )
    p.add_argument(
        "--work-dir", default=None, help="baselines and run folders (default: beside the store)"
    )
    p.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="STORE",
        help="another store whose finished runs this spec also has: copied in, not run again "
        "(repeatable)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_bench_run)
    p = bench_sub.add_parser("report", help="HTML and Markdown report of one or more stores")
    p.add_argument("stores", nargs="+", help="store files or folders of shards (*.sqlite)")
    p.add_argument(
        "--out", default="report", metavar="DIR", help="folder to write (default: report)"
    )
    p.add_argument("--title", default="prunekit benchmark", help="the report's title")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=cmd_bench_report)

    p = sub.add_parser("train", help="train a model on a data set (resumes an interrupted run)")
    _common(p)
    add_config_args(p, TrainConfig)
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="run folder (default: runs/<model>-<data>-<hash>)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run --out holds when it is another run (default: refuse)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint or a model file on a data set")
    p.add_argument(
        "--checkpoint",
        "--model-file",
        required=True,
        metavar="PATH",
        help="a checkpoint written by `prunekit train`, or a model file (a run's pruned.pt, "
        "a `prunekit compress` file)",
    )
    p.add_argument("--split", default="test", choices=["train", "val", "test", "trainval"])
    _common(p, model=False)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "info",
        help="per-layer params and MACs of a model and how its channels can be pruned",
        description="--model is a registered name (fitted to --data) or, with --input-shape, "
        "a registered name or any importable constructor package.module:factory",
    )
    _common(p)
    p.add_argument(
        "--input-shape",
        default=None,
        metavar="B,C,H,W",
        help="build the model for this input instead of a data set (needed for "
        "--model package.module:factory)",
    )
    p.add_argument(
        "--groups", action="store_true", help="(the channel groups are always listed now)"
    )
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("list", help="list the registered models and data sets")
    p.add_argument("what", nargs="?", default="all", choices=["models", "data", "all"])
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_list)
    return parser


def _version() -> str:
    from prunekit import __version__

    return f"prunekit {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], Any] = args.func
    try:
        # under torchrun every rank runs the command; only rank 0 prints its tables
        quiet = os.environ.get("RANK", "0") != "0"
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            func(args)
    except KeyboardInterrupt:
        print("prunekit: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # one clear line for the user; --debug for the traceback
        if args.debug:
            raise
        print(f"prunekit: error: {_describe(exc)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        shutdown()  # a torchrun launch must not exit with a live process group
    return 0


def _describe(exc: BaseException) -> str:
    from prunekit.errors import PrunekitError, one_line

    msg = one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, PrunekitError):
        return msg
    return f"{type(exc).__name__}: {msg} (run with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
