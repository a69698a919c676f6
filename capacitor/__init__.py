"""Capacitor: a store-and-forward DICOM router driven by checked rules."""

__version__ = "0.1.0"
