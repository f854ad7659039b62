"""Build tooling (not shipped): docgen makes the man page and the shell completion."""
