"""study step of the mixtune pipeline."""
