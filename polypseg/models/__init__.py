"""The model: frozen encoders (one registry), the trainable decoder, and their composition."""
