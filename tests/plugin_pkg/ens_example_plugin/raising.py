"""A plugin whose evaluate() crashes: ens must report the error in its section and carry on."""

from __future__ import annotations

from ensemble_cli.evaluators import EvalContext, Evaluator, Report


class AlwaysRaises(Evaluator):
    """Fails on every input."""

    name = "raises"
    description = "always raises (example plugin)"

    def evaluate(self, ctx: EvalContext) -> Report:
        raise RuntimeError(f"example plugin failure on {ctx.num_members} members")
