"""Audio in: sources push native-rate blocks into an SPSC ring; the resampler makes 16 kHz mono."""
