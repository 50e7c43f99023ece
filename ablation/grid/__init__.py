"""The ablation grid: expand an experiment spec into runs and execute them, resumable and in parallel.

Every skip subset x connector x dataset x seed x fold of a study (UCTransNet, Wang et al., AAAI 2022, Fig. 3 and
Table 3) is one run folder; ``run_grid`` trains those not done yet, locally or on Ray. No torch import here.

Modules, lowest first: ``locks`` (run claims), ``gpus`` (what the machine offers), ``status`` (where each run
stands), ``execute`` (claim and train one unit), ``local`` and ``ray_backend`` (schedule units), ``runner``
(``run_grid``), ``spec_keys`` and ``spec`` (experiment specs), ``datasets`` (a spec's data found and foldable),
``filters`` (``--only``), ``cost`` and ``throughput`` (``--dry-run``'s estimate), ``cli``.
"""

from .execute import RunOutcome, execute_unit, train_runs
from .filters import select_runs
from .runner import GridSummary, plan_units, run_grid
from .spec import GridSpec, expand_spec, load_spec
from .status import RunState, grid_status

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
    "train_runs",
]
