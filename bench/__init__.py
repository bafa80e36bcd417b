"""The benchmark suite: ``python -m bench`` (or ``nox -s bench``) runs every scenario.

Layout: ``_harness`` (configuration, repetition, statistics, subprocesses),
``_report`` (the table and docs/benchmarks.md), ``_workflows`` (what is run),
then one module per scenario group, each with ``run(cfg) -> Section``:
``throughput`` (1, 2, 9), ``parked`` (3, 5 on MemoryStorage, 8), ``durable``
(4, also runs ``file_storage``), ``recovery`` (5 on FileStorage),
``timers_scenario`` (6, runs ``timers``), ``telemetry`` (7, also runs
``telemetry_cost``). ``file_storage``, ``timers`` and ``telemetry_cost`` have
owners of their own. ``peers`` compares with DBOS in its own virtualenv
(``nox -s bench_peers``); ``profile`` prints scenario 1's hot spots.
Figures are ratios against baselines measured in the same run: the machine
is shared and noisy.
"""
