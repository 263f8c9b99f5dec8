"""Analyses the seeds' pre-training claims rest on (`mixtune analyze <what>`, docs/analyses.md): knowledge capacity
(capacity.py, capacity_train.py, bits.py), scaling laws (scaling.py, scaling_fit.py, scaling_report.py) and continued
pre-training (cpt.py, cpt_report.py); report.py holds what they share. Top floor, beside study/ (may import it)."""
