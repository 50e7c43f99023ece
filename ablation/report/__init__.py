"""Reports of a skip-connection study: tables, figures, statistics, Shapley values and the paper's findings.

No torch import anywhere in this package, so a copied ``results/`` folder can be explored on any machine.
Entry points: :func:`load_results` (tidy frames) and :func:`write_report` (everything, into a folder).
"""

from ablation.report.load import Results, load_results
from ablation.report.write import write_report

__all__ = ["Results", "load_results", "write_report"]
