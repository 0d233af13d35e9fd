"""foldwise: k-fold training and bagging of image models, stage by stage under DVC."""
