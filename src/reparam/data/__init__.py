"""Dataset preparation: the DeepForest default data set and tiny generated detection sets for tests."""

from reparam.data.deepforest import prepare_deepforest
from reparam.data.synthetic import make_synthetic_dataset

__all__ = ["make_synthetic_dataset", "prepare_deepforest"]
