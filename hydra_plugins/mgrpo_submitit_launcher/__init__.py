"""mgrpo's SLURM launcher: Hydra's submitit launcher that collects every job before reporting.

Selected by `conf/cluster/slurm.yaml` (`hydra/launcher: submitit_slurm` with this `_target_`).
"""
