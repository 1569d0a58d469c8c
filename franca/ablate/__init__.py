"""Ablation sweeps: named config variants × seeds at equal compute, evaluated and compared with error bars.

``variants`` turns names and ``key=value`` overrides into runs (and refuses overrides that would make
the compute unequal), ``sweep`` trains and evaluates them with per-run resume, ``evaluate`` runs the
chosen protocols on one backbone, ``stats`` holds the seed statistics (mean ± std, paired t interval,
bootstrap interval) and ``report`` writes the JSON, the markdown table and the plot.
"""
