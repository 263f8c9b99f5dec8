"""train step of the mixtune pipeline."""
