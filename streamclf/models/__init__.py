"""The musicnn taggers: model cards (runtime) and, with torch, the port, converter and exporter.

`card` is all the daemon imports; `musicnn`, `importer` (and `tfcheckpoint`, which needs only
numpy) are for `streamclf model import` and the parity tests.
"""
