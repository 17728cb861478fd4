"""`streamclf bench`: measured speed, latency, capacity and memory (report.py runs the sections)."""
