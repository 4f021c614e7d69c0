"""The driver side of streamkv: the `streamkv` command line (and, next, the Ray sweep driver)."""
