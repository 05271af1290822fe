"""Data loading: named datasets, image folders, arrays and CSV tables -> float32 tensors.

    from vaekit.data import load_data
    data = load_data("mnist", binarize="dynamic")   # Data(spec, train, val, test, source, ...)
"""

from .spec import DataSpec

__all__ = ["DATASETS", "Data", "DataSpec", "Split", "load_data", "load_inputs", "read_idx"]


def __getattr__(name: str):
    # Loaded on first use, so importing vaekit.data.spec (as the models do) stays light.
    if name in ("DATASETS", "Data", "Split", "load_data", "load_inputs"):
        from . import datasets

        return getattr(datasets, name)
    if name == "read_idx":
        from .readers import read_idx

        return read_idx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
