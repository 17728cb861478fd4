"""Log-mel features: pure DSP (mel.py) and the incremental sliding-window framer (framer.py)."""
