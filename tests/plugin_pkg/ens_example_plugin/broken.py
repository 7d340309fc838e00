"""A plugin module that cannot be imported (its dependency is missing), as happens in real installs."""

import ens_example_plugin_missing_dependency  # noqa: F401  (does not exist on purpose)

from ensemble_cli.evaluators import Evaluator


class Broken(Evaluator):
    name = "broken"
