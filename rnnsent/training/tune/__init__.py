"""`rnnsent tune`: hyperparameter search on Optuna (docs/tuning.md); tune() is in rnnsent.training.tune.search.
Optuna is an optional extra (pip install 'rnnsent[tune]'), imported only where a search runs."""
