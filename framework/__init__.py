"""alignray: preference alignment on Ray Train + DeepSpeed ZeRO.

Subpackages import their heavy dependencies lazily; importing `framework` is cheap.
"""

__version__ = "0.1.0"
