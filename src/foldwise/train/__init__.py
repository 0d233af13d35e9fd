"""The train step: one fold's run (`train`, the train stage; `pseudo`, its further rounds), its
loop, the loader that feeds it, augmentation, timm's recipe (mixup, EMA, clipping),
checkpoints and resume, several devices, and the test-time views shared with export."""
