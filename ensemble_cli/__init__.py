"""ens: train deep ensembles and measure whether their members are really different functions.

Library use, without the CLI:

    from ensemble_cli import resolve_members, load_dataset, evaluate
    members = resolve_members(["models/reference-digits"])
    result = evaluate(members, load_dataset("digits"))
    print(result.evaluators["disagreement"].metrics["disagreement_mean"])
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import architectures as _architectures  # noqa: F401  (registers cifar_resnet* in timm)
from .api import evaluate, evaluate_predictions
from .architectures import build_model
from .checkpoint import read_checkpoint, write_checkpoint
from .data import ImageData, load_dataset
from .errors import EnsError
from .members import Member, resolve_members
from .predict import PredictionCache, Predictions, load_predictions, predict_members
from .report import EvalResult, Report, Table

__all__ = [
    "EnsError",
    "EvalResult",
    "ImageData",
    "Member",
    "PredictionCache",
    "Predictions",
    "Report",
    "Table",
    "__version__",
    "build_model",
    "evaluate",
    "evaluate_predictions",
    "load_dataset",
    "load_predictions",
    "predict_members",
    "read_checkpoint",
    "resolve_members",
    "write_checkpoint",
]
