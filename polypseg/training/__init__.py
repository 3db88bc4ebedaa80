"""Training the decoder over cached features: the loss, the `fit` loop, one logged run."""
