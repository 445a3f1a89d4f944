"""A user's project for the tests: a model file and a data file that configs
name by class_path (file paths, as a user's own project would)."""
