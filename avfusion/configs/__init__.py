"""The shipped experiment configs (installed as the package data ``avfusion.configs``)."""
