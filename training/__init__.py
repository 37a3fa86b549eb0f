"""Trains the classifier and publishes versions into the model store."""
