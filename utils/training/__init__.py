"""Training machinery: precision, metrics, data, optimizers, the AMP benchmark."""
