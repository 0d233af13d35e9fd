"""The ensemble step: the bag of folds, temperature calibration, test-neighbour averaging and
blends of experiments, each scored out-of-fold."""
