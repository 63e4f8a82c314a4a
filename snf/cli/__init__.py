"""The `snf` command line (entry point: snf.cli.main:main)."""
