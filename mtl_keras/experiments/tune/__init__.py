"""Tuning experiments: a KerasTuner search of task weights and methods.

`space` (what is searched), `hypermodel` (`MultiTaskHyperModel`), `search`
(`search`, `TUNERS`), `search_result` (`SearchResult`), `options` (the
option groups) and `tune` (`tune` on a suite or your own parts,
`search_shapes`). `mtl_keras.tuning` is its public face.
"""
