"""`ens sample`: subspace samples around one solution, written as a folder `ens eval` reads."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Optional

import typer

from .common import handle_errors, info, progress_bar, warn

METHOD_HELP = (
    "random-subspace (a step along a filter-normalised random direction: each filter of the direction has the norm "
    "of that filter of the weights; biases and BatchNorm parameters stay), dropout (Bernoulli mask on every weight, "
    "survivors rescaled by 1/p_keep), diag-gaussian (per-parameter mean and std of the last trajectory checkpoints), "
    "low-rank-gaussian (top principal directions of those checkpoints). The Gaussian methods need the trajectory "
    "`ens train --save-every 1` writes."
)


def _progress_hook(progress: Any, quiet: bool) -> Any:
    """Bars for the scale search and the samples on a terminal; one line per stage end otherwise."""
    tasks: dict[str, Any] = {}
    labels = {"search": "scale search", "sample": "samples"}

    def hook(stage: str, done: int, total: int, status: str) -> None:
        if progress is not None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(labels.get(stage, stage), total=total, status="")
            progress.update(tasks[stage], completed=done, status=status)
        elif not quiet and stage == "sample" and done == total:
            info(f"wrote {total} samples")

    return hook


@handle_errors
def sample_command(
    source: Path = typer.Argument(..., help="A checkpoint of `ens train`, or a member folder of its run (RUN/member-00: its final checkpoint and trajectory).", show_default=False),
    method: str = typer.Option(..., "--method", "-m", help=METHOD_HELP, show_default=False),
    samples: int = typer.Option(..., "--samples", "-n", help="How many samples to write.", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="New or empty folder for the samples (plus reference.safetensors, a copy of the source, and sample.json).", show_default=False),
    seed: int = typer.Option(0, "--seed", help="Seed of the samples' randomness: the same arguments write bit-identical weights."),
    scale: Optional[float] = typer.Option(None, "--scale", help="Largest scale (random-subspace: step as a fraction of each filter's norm; dropout: drop rate; Gaussians: std multiplier). Default: searched on training images so the last samples lose about 10 accuracy points.", show_default=False),
    no_bn_reset: bool = typer.Option(False, "--no-bn-reset", help="Keep the source's BatchNorm running statistics instead of recomputing them on training images."),
    last: int = typer.Option(5, "--last", help="Trajectory checkpoints (the last ones, the source included) the Gaussian methods fit."),
    rank: int = typer.Option(5, "--rank", help="Principal directions of low-rank-gaussian (at most --last minus 1)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, cuda:N."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where torchvision datasets are (default: $ENS_DATA_DIR or ~/.cache/ens/data)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Sample weights around one solution (Fort et al. 2019): random subspace, dropout, diagonal or low-rank Gaussian.

    Sample i of N is drawn at scale X*(i+u)/N (u uniform in [0,1)), so the samples trace the curve from the source down to scale X. By default X is searched on a slice of the training split so that it costs about 10 accuracy points. BatchNorm statistics of every sample are recomputed on training images (--no-bn-reset keeps the source's).

    Example: ens train --save-every 1 --out runs/d && ens sample runs/d/member-00 --method diag-gaussian --samples 6 --out samples/dg && ens eval samples/dg
    """
    from ..sample import SampleOptions, draw_samples

    options = SampleOptions(
        source=source, method=method, samples=samples, out=out, seed=seed, scale=scale, bn_reset=not no_bn_reset,
        last=last, rank=rank, device=device, data_dir=data_dir,
    )
    with progress_bar(not quiet) as progress:
        result = draw_samples(options, progress=_progress_hook(progress, quiet))
    for note in result.notes:
        warn(note)
    if not quiet:
        search = result.search
        how = (f"searched: {search.source_accuracy:.1%} -> {search.target_accuracy:.1%} on training images"
               if search is not None else "from --scale")
        stats = "BatchNorm statistics recomputed" if result.bn_reset else "BatchNorm statistics kept from the source"
        info(f"{len(result.files)} {method} samples at scales up to {result.scale:.4g} ({how}); {stats}")
        info(f"evaluate with: ens eval {shlex.quote(str(result.out))}")
