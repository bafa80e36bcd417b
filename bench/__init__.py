"""The benchmark suite: ``python -m bench`` (or ``nox -s bench``) runs every scenario.

Layout: ``_harness`` (configuration, repetition, statistics, subprocesses),
``_report`` (the table and docs/benchmarks.md), ``_workflows`` (what is run),
then one module per scenario group, each with ``run(cfg) -> Section``:
``throughput`` (1, 2, 9), ``parked`` (3, 8), ``durable`` (4), ``recovery`` (5),
``timers_scenario`` (6, wraps ``timers``), ``telemetry`` (7, also uses
``telemetry_cost``). ``peers`` compares with DBOS in its own virtualenv
(``nox -s bench_peers``). Figures are ratios against baselines measured in the
same run: the machine is shared and noisy.
"""
