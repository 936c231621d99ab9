"""The FAMOUS version, in core so that the pipeline can record it without importing the add-on."""

__version__ = "0.1.0"
