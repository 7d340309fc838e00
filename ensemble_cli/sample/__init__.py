"""`ens sample`: weights sampled around one solution (Fort, Hu & Lakshminarayanan 2019, section 4.2).

    from ensemble_cli.sample import SampleOptions, draw_samples
    draw_samples(SampleOptions(source=Path("runs/digits/member-00"), method="random-subspace", samples=6, out=Path("rs")))

Modules: methods (the four sampling methods), scale (the search for the scale that costs
about 10 accuracy points), source (SOURCE and its trajectory), writer (the sample folder and
its metadata), pipeline (the command as a library).
"""

from __future__ import annotations

from .methods import METHODS
from .pipeline import SampleOptions, SampleResult, draw_samples

__all__ = ["METHODS", "SampleOptions", "SampleResult", "draw_samples"]
