"""data step of the mixtune pipeline."""
