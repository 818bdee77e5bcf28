"""Feature-selection benchmark: does a method find *exactly* the true inputs of a physical law?

    python -m benchmarks.selection [--smoke] [--laws all|NAME,...] [--grid full|small|hard|SPEC]
                                   [--only METHOD,...] [--seeds N] [--jobs N] [--out DIR]
                                   [--resume] [--redo METHOD,...] [--cache-dir DIR]

What is measured (GitHub issue 16). A scientist who fits a model to find which quantities drive
an effect needs the selection to be *right*, not merely good for prediction: a kept distractor
is a false discovery, a dropped variable a missed one. Each set here has a known answer: a
closed-form law from :data:`lumos.workloads.laws.LAWS` (13 laws, 3 to 5 variables each), hidden
in a table with

* **noise columns**: 12, 48 or 200 iid N(0, 1) columns the target does not depend on;
* **correlated proxies**: 0 or 4 columns ``0.9·z(v) + sqrt(0.19)·ε`` of a true variable ``v``
  (81% of its variance; named ``proxy_of_<v>``), predictive but not causal: the hard case for
  any method that selects by predictive value alone;
* **little or more data**: 500 or 4000 rows, 25% of them held out;
* **arbitrary units**: the target times ``10^U(-3,3)`` plus an offset, 5% label noise, the
  columns shuffled; every method gets the same raw training rows.

The default run is the 12 conditions rows × noise × proxies for 10 of the 13 laws (the three
left out repeat another law's form; ``--laws all`` adds them), about an hour on one core;
``--grid`` and ``--laws`` pick a part, ``--jobs 2`` runs two sets at a time, ``--smoke`` runs 3
laws in 3 conditions of 500 rows in about 2 minutes.

Methods (``benchmarks/selection/methods.py``, one function each, ``select(X, y, seed)``): LUMOS
(``LumosRegressor`` with its defaults: ``selected_features_``, ``feature_importances_``), STG and
LassoNet (run as in ``benchmarks/peers/features.py``), random-forest impurity and mutual
information rankings cut at the true count k (*oracle k*: they are told the answer's size),
stability selection (a randomized-lasso implementation of our own: no maintained package
installs here) and model-X knockoffs (``knockpy``, where installed).

Metrics per (law, condition, method): precision, recall and F1 against the true variables,
exact recovery (kept set == true set), columns kept and how many of them are proxies or noise,
whether the method's scores rank the true variables first, the downstream R² of a small
scikit-learn MLP trained on the kept columns (next to the same MLP on the true columns and on
all), and the selection's wall time.

Results: ``docs/results/selection.{json,md}`` (``selection_smoke.*`` with ``--smoke``; ``--out``
elsewhere), a summary per condition and method (exact recoveries, mean and minimum precision,
mean recall and F1, ...) and a per-law table. Every (set, method) record is cached under
``OUT/selection/`` (``--cache-dir``); ``--resume`` reuses those with the same settings and
``--redo lumos`` recomputes one method's records (after changing LUMOS's algorithm).
"""
