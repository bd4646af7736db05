"""Fuzz targets: the image parser, the mapping loader and the configuration loader."""
