"""What training and serving share: the store format, preprocessing, datasets, metrics, engines."""
