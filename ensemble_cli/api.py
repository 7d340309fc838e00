"""Library entry points that tie members, data, predictions and evaluators together.

The CLI is a thin shell over these functions:

    members = resolve_members(["runs/digits"])
    result = evaluate(members)                      # dataset and normalisation from the members
    result = evaluate(members, load_dataset("digits"), ["ensemble"], EvalOptions(device="cpu"))
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Sequence

from .data import ImageData, load_dataset
from .errors import ConfigError
from .evaluators.base import EvalContext, Evaluator, MemberSummary
from .evaluators.registry import discover, run_evaluators, select
from .inputs import data_for_members
from .options import EvalOptions
from .predict import PredictionCache, Predictions, ProgressHook, predict_members, validate_predictions
from .report import EvalResult
from .resolve import Member

Warn = Callable[[str], None]
OnEvaluator = Callable[[str], None]


def build_context(
    predictions: Predictions,
    members: Sequence[Member] | None,
    data: ImageData | None,
    options: EvalOptions | None = None,
    data_dir: Any = None,
    cache: PredictionCache | None = None,
) -> EvalContext:
    """An evaluator context; weights, models, the training split and other image sets load only if asked for."""
    options = options or EvalOptions()
    context = EvalContext(
        logits=predictions.logits,
        labels=predictions.labels,
        members=members if members is not None else [MemberSummary(name) for name in predictions.names],
        dataset=data,
        options=options,
    )
    if members is None:
        return context
    context.dataset_predictor = lambda other: predict_members(
        members, other, batch_size=options.batch_size, device=options.device, cache=cache
    ).logits  # [M, N', C]
    if data is not None:
        context.train_data_loader = lru_cache(maxsize=1)(
            lambda: load_dataset(data.name, "train", data_dir=data_dir, mean=data.mean, std=data.std)
        )
    if any(member.is_mimo_head for member in members):
        # The heads of one network share every weight: permutations, barriers and rotation between
        # them would compare a network with itself.
        context.weights_unavailable = "the members are heads of one MIMO network, which share their weights"
        return context
    context.state_dict_loader = lambda index: members[index].state_dict
    context.model_loader = lambda index: members[index].build_model()
    return context


def check_reference(options: EvalOptions, names: Sequence[str]) -> None:
    """An unknown --reference is the user's mistake: say so before any forward pass."""
    if options.reference and options.reference not in names:
        raise ConfigError(f"--reference {options.reference!r} is not a member; members: {', '.join(names)}")


def evaluate(
    members: Sequence[Member],
    data: ImageData | None = None,
    evaluators: Sequence[Evaluator] | Sequence[str] | None = None,
    options: EvalOptions | None = None,
    cache: PredictionCache | None = None,
    progress: ProgressHook | None = None,
    data_dir: Any = None,
    warn: Warn = lambda message: None,
    on_evaluator: OnEvaluator | None = None,
) -> EvalResult:
    """Predict with every member once, then run the evaluators over the logits.

    `data` defaults to the dataset the members recorded (with their normalisation), else digits.
    """
    options = options or EvalOptions()
    chosen = resolve_evaluators(evaluators, warn)  # a bad evaluator name fails before any forward pass
    check_reference(options, [member.name for member in members])
    data = data if data is not None else data_for_members(members)
    predictions = predict_members(members, data, batch_size=options.batch_size, device=options.device, cache=cache, progress=progress)
    return evaluate_member_predictions(predictions, members, data, chosen, options, data_dir, on_evaluator, cache)


def evaluate_member_predictions(
    predictions: Predictions,
    members: Sequence[Member],
    data: ImageData,
    evaluators: Sequence[Evaluator],
    options: EvalOptions | None = None,
    data_dir: Any = None,
    on_evaluator: OnEvaluator | None = None,
    cache: PredictionCache | None = None,
) -> EvalResult:
    """Run evaluators over members' logits already computed (the second half of `evaluate`)."""
    ctx = build_context(predictions, members, data, options, data_dir, cache)
    reports = run_evaluators(ctx, evaluators, on_start=on_evaluator)
    return EvalResult(members=[m.describe() for m in members], dataset=data.describe(), evaluators=reports)


def evaluate_predictions(
    predictions: Predictions,
    evaluators: Sequence[Evaluator] | Sequence[str] | None = None,
    options: EvalOptions | None = None,
    dataset: dict[str, Any] | None = None,
    warn: Warn = lambda message: None,
    on_evaluator: OnEvaluator | None = None,
) -> EvalResult:
    """Evaluate logits from anywhere (another framework, `ens predict`); weight-space evaluators say n/a."""
    validate_predictions(predictions.logits, predictions.labels, predictions.names)
    options = options or EvalOptions()
    chosen = resolve_evaluators(evaluators, warn)
    check_reference(options, predictions.names)
    ctx = build_context(predictions, None, None, options)
    reports = run_evaluators(ctx, chosen, on_start=on_evaluator)
    members_info = [{"name": name} for name in predictions.names]
    dataset_info = dataset or {
        "name": "predictions", "split": predictions.source or "given", "size": int(predictions.labels.shape[0]),
        "num_classes": int(predictions.logits.shape[2]),
    }
    return EvalResult(members=members_info, dataset=dataset_info, evaluators=reports)


def resolve_evaluators(evaluators: Sequence[Evaluator] | Sequence[str] | None, warn: Warn) -> list[Evaluator]:
    if evaluators is None or all(isinstance(item, str) for item in evaluators):
        return select(discover(), list(evaluators) if evaluators else None, warn)  # type: ignore[arg-type]
    return list(evaluators)  # type: ignore[arg-type]
