"""model step of the mixtune pipeline."""
