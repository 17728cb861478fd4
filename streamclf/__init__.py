"""streamclf: real-time music genre classification of live audio, published on a ZeroMQ feed."""

__version__ = "0.1.0"
