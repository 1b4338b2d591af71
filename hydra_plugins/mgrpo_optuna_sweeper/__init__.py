"""mgrpo's Optuna sweeper for Hydra (`hydra/sweeper: mgrpo_optuna`), over optuna's ask-and-tell API.

Why not hydra-optuna-sweeper: its last release pins optuna<3, and that optuna fails with any
SQLite study storage under SQLAlchemy 2, which MLflow needs. This plugin keeps Hydra's Optuna
search-space syntax and works with current optuna. Options: `config.py`; behaviour: `sweeper.py`.
"""
