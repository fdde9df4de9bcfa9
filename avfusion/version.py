"""The package version, in the lowest module so nothing imports the package root from below."""
__version__ = "0.2.0"
