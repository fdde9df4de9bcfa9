"""Command-line interface: ``avfusion COMMAND`` (see :mod:`avfusion.cli.main`)."""
