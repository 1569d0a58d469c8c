"""Data: multi-crop augmentation, masking, collate, readers of the on-disk data set layouts, the toy set.
May import franca.utils only."""
