"""hermes-api's benchmark: ``python -m bench`` (see README.md), or ``bench/run.sh``."""
