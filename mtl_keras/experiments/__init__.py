"""Experiments: jobs built from the library over a suite or your own parts.

- `compare`: every method and the single-task baselines, seed by seed
  (`mtl_keras.compare` is its public face);
- `tune`: a KerasTuner search of task weights and method hyperparameters,
  scored by Δm% (`mtl_keras.tuning`).

Modules: `options` (the option groups), `method_parts` (method name →
balancer and callbacks), `run` (one run), `record` (`RunRecord`), `result`
(`CompareResult`), `markdown` and `plot` (writing results), `run_log` (the
resume log), and the `tune` package.
"""
