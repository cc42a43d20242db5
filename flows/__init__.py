"""The jobs a user runs: the `atc` command line and its Python entry points. Thin by design."""
