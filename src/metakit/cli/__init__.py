"""The ``metakit`` command line (thin: parse, then call the library)."""
