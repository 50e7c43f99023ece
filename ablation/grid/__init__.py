"""The ablation grid: expand an experiment spec into runs and execute them, resumable and in parallel.

Every skip subset x connector x dataset x seed x fold of a study (UCTransNet, Wang et al., AAAI 2022, Fig. 3 and
Table 3) is one run folder; ``run_grid`` trains those not done yet, locally or on Ray. No torch import here.
"""

from .runner import GridSummary, RunOutcome, RunState, execute_unit, grid_status, plan_units, run_grid
from .spec import GridSpec, expand_spec, load_spec, select_runs

__all__ = [
    "GridSpec",
    "GridSummary",
    "RunOutcome",
    "RunState",
    "execute_unit",
    "expand_spec",
    "grid_status",
    "load_spec",
    "plan_units",
    "run_grid",
    "select_runs",
]
