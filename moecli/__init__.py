"""moecli: run big Mixture-of-Experts language models on small GPUs through llama.cpp."""

__version__ = "0.1.0"
