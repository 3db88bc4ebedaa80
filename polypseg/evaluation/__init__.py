"""Scoring a model, or any method's saved maps, under polypseg's or PraNet's protocol
(`evaluate`), and using a model on new images (`predict`)."""
