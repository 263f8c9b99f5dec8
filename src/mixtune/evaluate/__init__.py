"""evaluate step of the mixtune pipeline."""
