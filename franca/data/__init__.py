"""Data: the one image source (`source.open_images`), multi-crop augmentation, masking, collate, readers of the
on-disk data set layouts, the toy set. May import franca.utils only."""
