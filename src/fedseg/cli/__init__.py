"""The ``fedseg`` command line (thin: parses, then calls runtime/report)."""
