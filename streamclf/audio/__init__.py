"""Audio in: sources push native-rate blocks into an SPSC ring; the resampler makes 16 kHz mono.

Everything after the resampler runs at the model's rate, so that rate lives here, at the bottom
of the dependency order, where the resampler and the log-mel front end both take it.
"""

SAMPLE_RATE_HZ = 16000  # musicnn's input rate
