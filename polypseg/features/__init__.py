"""The feature cache: the frozen encoder runs once per image; `prepare` gets a config ready."""
