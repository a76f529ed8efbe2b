"""Benchmark evaluation as the paper reports it (see ``docs/eval.md``).

* :mod:`pgpo.eval.benchmarks`: one adapter per benchmark (its public schema, the protocol's rows);
* :mod:`pgpo.eval.generation`: transformers / vLLM generators with the protocol's sampling and image settings;
* :mod:`pgpo.eval.config`: :class:`~pgpo.eval.config.EvalConfig` (the ``pgpo eval`` flags), the protocols, Table 1;
* :mod:`pgpo.eval.evaluate`: :func:`~pgpo.eval.evaluate.evaluate`, resumable per-sample JSONL, data-parallel shards;
* :mod:`pgpo.eval.report`: avg@k, bootstrap intervals, the Table-1 row (``summary.md`` / ``summary.json``).

Answer grading lives in :mod:`pgpo.answers`.
"""
