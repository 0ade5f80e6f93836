"""Downstream evaluation of embedding models: linear probes and kNN on labeled audio.

- :mod:`.config`: the settings and their defaults (standard library only).
- :mod:`.data`: labeled folders and CSVs, with bad rows skipped and counted.
- :mod:`.embed`: clip embeddings from any model or the log-mel baseline, cached on disk.
- :mod:`.protocol`: fixed folds or stratified k-fold, validation carved from training folds.
- :mod:`.probes`: linear probe (torch) and cosine kNN, settings chosen on validation only.
- :mod:`.metrics`: accuracy, macro-F1, mAP, mean and 95% CI over folds.
- :mod:`.evaluate`: the run that ties them together; :mod:`.report` and :mod:`.plots` show it.

Submodules are imported explicitly (``from pyssondo.evaluation.evaluate import evaluate``) so
that importing the package, as ``ssondo --help`` does, loads nothing heavy.
"""
