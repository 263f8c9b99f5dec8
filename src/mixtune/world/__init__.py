"""world step of the mixtune pipeline."""
