"""MLflow: the store, what runs log and how they end, the pyfunc model, the registry."""
