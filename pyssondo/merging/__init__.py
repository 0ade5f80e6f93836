"""Merging students distilled from one start (task arithmetic), ``ssondo merge``.

- :mod:`.task_vectors`: the merge formula on state dicts, batch-norm weights, ``ssondo init``.
- :mod:`.recalibrate`: batch-norm statistics recomputed on audio.
- :mod:`.runs`: loading and checking runs, merged students, candidates scored with the probes.
- :mod:`.search`: the lambda grid, the choice rule, the table and the plot of ``--search``.
- :mod:`.agreement`: ``--search-unlabeled``, the same choice by kNN agreement with the teachers.
"""
