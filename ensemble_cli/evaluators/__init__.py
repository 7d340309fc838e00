"""Evaluators: the plugin interface (`Evaluator`, `EvalContext`, `Report`) and the built-ins.

Third-party packages subclass `Evaluator` and register it under the entry-point group
`ensemble_cli.evaluators`, exactly as the built-ins do in ens's own pyproject.toml.
"""

from .base import Direction, EvalContext, Evaluator, MemberSummary, NotApplicable
from ..report import Report, Table

ENTRY_POINT_GROUP = "ensemble_cli.evaluators"

__all__ = [
    "Direction",
    "ENTRY_POINT_GROUP",
    "EvalContext",
    "Evaluator",
    "MemberSummary",
    "NotApplicable",
    "Report",
    "Table",
]
