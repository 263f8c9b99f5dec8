"""analysis step of the mixtune pipeline."""
