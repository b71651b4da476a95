"""Runs over a data set stream without a broker: prequential accounting (prequential.py), `pegp-stream
replay` (replay.py), `pegp-stream eval` with held-out tests (run.py), its results (result.py) and plots."""
