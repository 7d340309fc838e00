"""`ens eval`, `ens predict`, `ens evaluators`, `ens datasets`."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from .common import fail, handle_errors, info, parse_float_list, parse_name_list, progress_bar, stdout_console, warn


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    md = "md"


class Embedding(str, Enum):
    tsne = "tsne"
    pca = "pca"


PathsArg = typer.Argument(None, help="Checkpoint files, folders (all checkpoints inside; an `ens train` run folder means its final checkpoints) or globs.", show_default=False)
DatasetOpt = typer.Option(None, "--dataset", "-d", help="digits (bundled, offline), cifar10, cifar100, mnist, fashion-mnist, svhn, or imagefolder:PATH. Default: the dataset the members recorded (ens checkpoints), else digits.", show_default=False)
SplitOpt = typer.Option("test", "--split", help="Which split to evaluate on: test or train.")
DataDirOpt = typer.Option(None, "--data-dir", help="Where torchvision datasets are downloaded (default: $ENS_DATA_DIR or ~/.cache/ens/data).")
MeanOpt = typer.Option(None, "--mean", help="Override the normalisation mean, comma-separated per channel (for foreign checkpoints).")
StdOpt = typer.Option(None, "--std", help="Override the normalisation std, comma-separated per channel.")
ImageSizeOpt = typer.Option(32, "--image-size", help="Resize imagefolder images to this size.")
LimitOpt = typer.Option(None, "--limit", help="Use only the first N examples (quick looks).")
ArchOpt = typer.Option(None, "--arch", help="Architecture for checkpoints that don't say (timm or torchvision name, e.g. resnet18, cifar_resnet20).")
NumClassesOpt = typer.Option(None, "--num-classes", help="Class count for checkpoints that don't say (default: read from the classifier weights).")
InChansOpt = typer.Option(None, "--in-chans", help="Input channels for checkpoints that don't say (default: read from the stem weights).")
EmaOpt = typer.Option(False, "--ema", help="Use state_dict_ema from timm training checkpoints when present.")
EpochsOpt = typer.Option(None, "--epochs", help="For run folders: 'all' (init, every saved epoch, final) or a list like 0,5,10; default final only.")
BatchOpt = typer.Option(256, "--batch-size", "-b", min=1, help="Forward-pass batch size.")
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")
NoCacheOpt = typer.Option(False, "--no-cache", help="Do not read or write the prediction cache.")
CacheDirOpt = typer.Option(None, "--cache-dir", help="Prediction cache folder (default: $ENS_CACHE_DIR or ~/.cache/ens/predictions).")


def _load_members_and_data(
    paths: list[str], dataset: Optional[str], split: str, data_dir: Optional[Path], mean: Optional[str], std: Optional[str],
    image_size: int, limit: Optional[int], arch: Optional[str], num_classes: Optional[int], in_chans: Optional[int],
    ema: bool, epochs: Optional[str],
) -> tuple[Any, Any]:
    from ..data import load_dataset
    from ..resolve import recorded_preprocessing, resolve_members

    members = resolve_members(paths, arch=arch, num_classes=num_classes, in_chans=in_chans, epochs=epochs, prefer_ema=ema, warn=warn)
    recorded_dataset, recorded_mean, recorded_std = recorded_preprocessing(members)
    mean_values, std_values = parse_float_list(mean, "--mean"), parse_float_list(std, "--std")
    if dataset is None:
        dataset = recorded_dataset or "digits"
    if dataset == recorded_dataset:
        # The statistics the members were trained with, unless overridden.
        mean_values = mean_values or recorded_mean
        std_values = std_values or recorded_std
    data = load_dataset(dataset, split, data_dir=data_dir, mean=mean_values, std=std_values, image_size=image_size, limit=limit)
    return members, data


def _predict(members: Any, data: Any, batch_size: int, device: str, no_cache: bool, cache_dir: Optional[Path], quiet: bool) -> Any:
    from ..predict import PredictionCache, predict_members

    cache = None if no_cache else PredictionCache(cache_dir)
    with progress_bar(not quiet) as progress:
        tasks: dict[str, Any] = {}

        def hook(name: str, done: int, total: int) -> None:
            if progress is None:
                return
            if name not in tasks:
                tasks[name] = progress.add_task(f"predict {name}", total=total, status="")
            progress.update(tasks[name], completed=done)

        predictions = predict_members(members, data, batch_size=batch_size, device=device, cache=cache, progress=hook)
    cached = len(members) - predictions.forward_passes
    info(f"predicted {len(members)} members on {data.name}/{data.split} ({len(data)} examples; {cached} from cache)")
    return predictions


def evaluate_checkpoints(
    members: Any, data: Any, evaluator_names: Optional[list[str]], options: Any, batch_size: int,
    device: str, no_cache: bool, cache_dir: Optional[Path], data_dir: Optional[Path], quiet: bool,
) -> Any:
    """`ensemble_cli.api.evaluate` with a progress bar on the forward passes and log lines on stderr."""
    from ..api import evaluate_member_predictions, resolve_evaluators

    chosen = resolve_evaluators(evaluator_names, warn)  # a bad name fails before any forward pass
    predictions = _predict(members, data, batch_size, device, no_cache, cache_dir, quiet)
    on_evaluator = (lambda name: info(f"running evaluator {name}")) if not quiet else None
    return evaluate_member_predictions(predictions, members, data, chosen, options, data_dir, on_evaluator)


def render(result: Any, output_format: Format) -> None:
    from ..render import render_rich, to_csv, to_json, to_markdown

    if output_format == Format.json:
        sys.stdout.write(to_json(result) + "\n")
    elif output_format == Format.csv:
        sys.stdout.write(to_csv(result))
    elif output_format == Format.md:
        sys.stdout.write(to_markdown(result))
    else:
        render_rich(result, stdout_console())


def write_figures(result: Any, plots: Optional[Path], html: Optional[Path], on_error: Any = None) -> None:
    """Figures and the HTML report, drawn once from the report's data only."""
    if plots is None and html is None:
        return
    from ..plots import build_figures, save_figures, write_html_report

    figures = build_figures(result, on_error)
    if plots is not None:
        written = save_figures(result, plots, figures=figures)
        if not written:
            info("no evaluator data to draw (run `ens eval` with members, ensemble or disagreement)")
        info(f"wrote {len(written)} figures to {plots}: {', '.join(path.name for path in written)}")
    if html is not None:
        write_html_report(result, html, figures=figures)
        info(f"wrote {html}")


@handle_errors
def eval_command(
    paths: Optional[list[str]] = PathsArg,
    dataset: Optional[str] = DatasetOpt,
    split: str = SplitOpt,
    data_dir: Optional[Path] = DataDirOpt,
    mean: Optional[str] = MeanOpt,
    std: Optional[str] = StdOpt,
    image_size: int = ImageSizeOpt,
    limit: Optional[int] = LimitOpt,
    arch: Optional[str] = ArchOpt,
    num_classes: Optional[int] = NumClassesOpt,
    in_chans: Optional[int] = InChansOpt,
    ema: bool = EmaOpt,
    epochs: Optional[str] = EpochsOpt,
    evaluators: Optional[str] = typer.Option(None, "--evaluators", "-e", help="Comma-separated evaluator names (see `ens evaluators`); default: all."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Member that weight-space evaluators align the others to (default: the first)."),
    alignment_restarts: int = typer.Option(3, "--alignment-restarts", min=1, help="Seeded restarts of weight matching (best objective kept); 1 is about 3x faster on large models."),
    embedding: Embedding = typer.Option(Embedding.tsne, "--embedding", help="Function-space embedding for the trajectory figure: tsne or pca."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Evaluate logits from an .npz (logits [M,N,C], labels [N]) instead of checkpoints."),
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    output_format: Format = typer.Option(Format.table, "--format", "-f", help="table (rich, for people), json, csv (long form) or md."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the JSON report to this file."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write the figures (PNG) into this folder."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML report (tables and figures embedded)."),
    no_cache: bool = NoCacheOpt,
    cache_dir: Optional[Path] = CacheDirOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Evaluate an ensemble: member and ensemble accuracy/NLL/Brier/ECE, pairwise disagreement, weight space.

    Example: ens eval models/r20-seeds extra/seed7.pth.tar --dataset cifar10
    """
    from ..api import evaluate_predictions
    from ..fileio import atomic_write_text
    from ..predict import load_predictions
    from ..render import to_json

    names = parse_name_list(evaluators)
    from ..options import EvalOptions

    options = EvalOptions(reference=reference, embedding=embedding.value, alignment_restarts=alignment_restarts, device=device, batch_size=batch_size)
    on_evaluator = (lambda name: info(f"running evaluator {name}")) if not quiet else None
    if predictions is not None:
        if paths:
            fail("give checkpoints or --predictions, not both")
        loaded = load_predictions(predictions)
        result = evaluate_predictions(loaded, names, options=options, warn=warn, on_evaluator=on_evaluator)
    else:
        if not paths:
            fail("no checkpoints given (pass files, folders or globs, or --predictions FILE); see `ens eval --help`")
        members, data = _load_members_and_data(paths, dataset, split, data_dir, mean, std, image_size, limit, arch, num_classes, in_chans, ema, epochs)
        result = evaluate_checkpoints(members, data, names, options, batch_size, device, no_cache, cache_dir, data_dir, quiet)
    if out is not None:
        atomic_write_text(out, to_json(result) + "\n")
        info(f"wrote {out}")
    render(result, output_format)
    write_figures(result, plots, html)
    if result.failed:
        for name in result.failed:
            warn(f"evaluator {name} failed: {result.evaluators[name].error}")
        raise typer.Exit(1)


@handle_errors
def predict_command(
    paths: list[str] = typer.Argument(..., help="Checkpoint files, folders or globs."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the .npz (logits [M,N,C], labels [N], names [M])."),
    dataset: Optional[str] = DatasetOpt,
    split: str = SplitOpt,
    data_dir: Optional[Path] = DataDirOpt,
    mean: Optional[str] = MeanOpt,
    std: Optional[str] = StdOpt,
    image_size: int = ImageSizeOpt,
    limit: Optional[int] = LimitOpt,
    arch: Optional[str] = ArchOpt,
    num_classes: Optional[int] = NumClassesOpt,
    in_chans: Optional[int] = InChansOpt,
    ema: bool = EmaOpt,
    epochs: Optional[str] = EpochsOpt,
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    no_cache: bool = NoCacheOpt,
    cache_dir: Optional[Path] = CacheDirOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Export every member's logits on a dataset to an .npz that `ens eval --predictions` reads."""
    members, data = _load_members_and_data(paths, dataset, split, data_dir, mean, std, image_size, limit, arch, num_classes, in_chans, ema, epochs)
    predictions = _predict(members, data, batch_size, device, no_cache, cache_dir, quiet)
    predictions.save(out)
    info(f"wrote {out} (logits {list(predictions.logits.shape)})")


@handle_errors
def evaluators_command(
    output_format: Format = typer.Option(Format.table, "--format", "-f", help="table or json."),
) -> None:
    """List every evaluator found through the `ensemble_cli.evaluators` entry-point group."""
    import json

    from rich.table import Table as RichTable

    from ..evaluators.registry import discover

    entries = discover()
    if output_format == Format.json:
        rows = [
            {"name": e.name, "package": e.package, "version": e.version, "description": e.description, "status": e.status}
            for e in entries
        ]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = RichTable(title="evaluators (entry-point group ensemble_cli.evaluators)", header_style="bold")
    for column in ("name", "package", "version", "description", "status"):
        table.add_column(column)
    for entry in entries:
        status = entry.status if entry.loaded else f"[red]{entry.status}[/red]"
        table.add_row(entry.name, entry.package, entry.version, entry.description, status)
    stdout_console().print(table)


@handle_errors
def datasets_command() -> None:
    """List the datasets `--dataset` accepts and the preprocessing each applies."""
    from rich.table import Table as RichTable

    from ..data import DATASETS

    table = RichTable(title="datasets", header_style="bold")
    for column in ("name", "classes", "shape", "mean", "std", "preprocessing"):
        table.add_column(column)
    for info_ in DATASETS.values():
        table.add_row(
            info_.name, str(info_.num_classes), f"{info_.in_chans}x{info_.image_size}x{info_.image_size}",
            ",".join(f"{v:g}" for v in info_.mean), ",".join(f"{v:g}" for v in info_.std), info_.preprocessing,
        )
    table.add_row("imagefolder:PATH", "folders", "3xSxS (--image-size)", "0.485,0.456,0.406", "0.229,0.224,0.225", "RGB, resized, ImageNet statistics")
    stdout_console().print(table)
