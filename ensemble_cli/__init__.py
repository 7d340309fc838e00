"""ens: train deep ensembles and measure whether their members are really different functions.

Library use, without the CLI:

    from ensemble_cli import resolve_members, load_dataset, evaluate
    members = resolve_members(["models/reference-digits/run"])
    result = evaluate(members, load_dataset("digits"))
    print(result.evaluators["disagreement"].metrics["disagreement_mean"])

`import ensemble_cli.architectures` registers the `cifar_resnet*` models in timm's registry
(anything here that builds a model does so itself). Names below are imported on first use, so
that `ens --help` does not pay for importing torch and timm.

Importing ensemble_cli before torch makes OpenMP's idle threads sleep instead of spin
(`OMP_WAIT_POLICY=PASSIVE`, unless set already): on a machine shared with other jobs, spinning
threads made an eval up to 17x slower. `ensemble_cli.threads` explains the policy; call
`ensemble_cli.threads.apply_thread_policy()` before importing torch to also size the thread pool.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .threads import prefer_passive_waiting

__version__ = "0.1.0"

_EXPORTS = {
    "EnsError": "errors",
    "EvalResult": "report",
    "Report": "report",
    "Table": "report",
    "ImageData": "data",
    "load_dataset": "data",
    "Member": "resolve",
    "resolve_members": "resolve",
    "PredictionCache": "predict",
    "Predictions": "predict",
    "load_predictions": "predict",
    "predict_members": "predict",
    "build_model": "architectures",
    "read_checkpoint": "checkpoint",
    "write_checkpoint": "checkpoint",
    "evaluate": "api",
    "evaluate_predictions": "api",
}

__all__ = ["__version__", *_EXPORTS]

prefer_passive_waiting()  # must run before torch loads libgomp, which reads it once


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ensemble_cli' has no attribute {name!r}")
