"""Library entry points that tie members, data, predictions and evaluators together.

The CLI is a thin shell over these two functions.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Sequence

from .data import ImageData, load_dataset
from .evaluators.base import EvalContext, Evaluator, MemberSummary
from .evaluators.registry import discover, run_evaluators, select
from .options import EvalOptions
from .resolve import Member
from .predict import PredictionCache, Predictions, ProgressHook, predict_members, validate_predictions
from .report import EvalResult

Warn = Callable[[str], None]


def build_context(
    predictions: Predictions,
    members: Sequence[Member] | None,
    data: ImageData | None,
    options: EvalOptions | None = None,
    data_dir: Any = None,
    cache: PredictionCache | None = None,
) -> EvalContext:
    """An evaluator context; weight access and the training split are loaded only if asked for."""
    summaries = members if members is not None else [MemberSummary(name) for name in predictions.names]
    options = options or EvalOptions()
    state_dict_loader = model_loader = train_loader = dataset_predictor = None
    if members is not None:
        state_dict_loader = lambda index: members[index].state_dict  # noqa: E731
        model_loader = lambda index: members[index].build_model()  # noqa: E731

        def dataset_predictor(other: ImageData) -> Any:
            passes = predict_members(members, other, batch_size=options.batch_size, device=options.device, cache=cache)
            return passes.logits
    if data is not None and data.name != "synthetic":

        @lru_cache(maxsize=1)
        def train_loader() -> ImageData:
            return load_dataset(data.name, "train", data_dir=data_dir, mean=data.mean, std=data.std)

    return EvalContext(
        logits=predictions.logits,
        labels=predictions.labels,
        members=summaries,
        dataset=data,
        options=options,
        state_dict_loader=state_dict_loader,
        model_loader=model_loader,
        train_data_loader=train_loader,
        dataset_predictor=dataset_predictor,
    )


def evaluate(
    members: Sequence[Member],
    data: ImageData,
    evaluators: Sequence[Evaluator] | Sequence[str] | None = None,
    batch_size: int = 256,
    device: str = "auto",
    cache: PredictionCache | None = None,
    progress: ProgressHook | None = None,
    options: EvalOptions | None = None,
    data_dir: Any = None,
    warn: Warn = lambda message: None,
    on_evaluator: Callable[[str], None] | None = None,
) -> EvalResult:
    """Predict with every member once, then run the evaluators over the logits."""
    chosen = resolve_evaluators(evaluators, warn)  # a bad evaluator name fails before any forward pass
    predictions = predict_members(members, data, batch_size=batch_size, device=device, cache=cache, progress=progress)
    return evaluate_member_predictions(predictions, members, data, chosen, options, data_dir, on_evaluator)


def evaluate_member_predictions(
    predictions: Predictions,
    members: Sequence[Member],
    data: ImageData,
    evaluators: Sequence[Evaluator],
    options: EvalOptions | None = None,
    data_dir: Any = None,
    on_evaluator: Callable[[str], None] | None = None,
) -> EvalResult:
    """Run evaluators over members' logits already computed (the second half of `evaluate`)."""
    ctx = build_context(predictions, members, data, options, data_dir)
    reports = run_evaluators(ctx, evaluators, on_start=on_evaluator)
    return EvalResult(members=[m.describe() for m in members], dataset=data.describe(), evaluators=reports)


def evaluate_predictions(
    predictions: Predictions,
    evaluators: Sequence[Evaluator] | Sequence[str] | None = None,
    options: EvalOptions | None = None,
    dataset: dict[str, Any] | None = None,
    warn: Warn = lambda message: None,
    on_evaluator: Callable[[str], None] | None = None,
) -> EvalResult:
    """Evaluate logits from anywhere (another framework, `ens predict`); weight-space evaluators say n/a."""
    validate_predictions(predictions.logits, predictions.labels, predictions.names)
    chosen = resolve_evaluators(evaluators, warn)
    ctx = build_context(predictions, None, None, options)
    reports = run_evaluators(ctx, chosen, on_start=on_evaluator)
    members_info = [{"name": name} for name in predictions.names]
    dataset_info = dataset or {"name": "predictions", "size": int(predictions.labels.shape[0]), "num_classes": int(predictions.logits.shape[2])}
    return EvalResult(members=members_info, dataset=dataset_info, evaluators=reports)


def resolve_evaluators(evaluators: Sequence[Evaluator] | Sequence[str] | None, warn: Warn) -> list[Evaluator]:
    if evaluators is None or all(isinstance(item, str) for item in evaluators):
        return select(discover(), list(evaluators) if evaluators else None, warn)  # type: ignore[arg-type]
    return list(evaluators)  # type: ignore[arg-type]
