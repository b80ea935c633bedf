"""Dataset preparation: the DeepForest default data set (``reparam.data.deepforest``, needs the yolo extra),
tiny generated detection sets for tests (``reparam.data.synthetic``) and Fashion-MNIST
(``reparam.data.fashion_mnist``, core only). Import the submodule you need: this package imports none.
"""
