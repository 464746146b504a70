"""Training: folds, the cache-backed dataset, the model registry, the loop and the run folder.

Public entry points: ``models.build_model``, ``models.predict_probs``, ``runs.load_run``, ``loop.train``,
``folds.make_folds``.
"""
