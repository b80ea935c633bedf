"""Dataset preparation: tiny generated detection sets for tests and smoke runs."""

from reparam.data.synthetic import make_synthetic_dataset

__all__ = ["make_synthetic_dataset"]
