"""The shipped model architectures (installed as ``avfusion.configs.models``)."""
