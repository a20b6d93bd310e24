"""Data: activation stores, shuffled batches, synthetic ground truth."""

from .batches import BatchStream
from .store import Store, StoreWriter
from .synth import load_truth, write_synth

__all__ = ["Store", "StoreWriter", "BatchStream", "write_synth", "load_truth"]
