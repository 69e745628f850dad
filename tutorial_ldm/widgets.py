"""The studio's first address: `from tutorial_ldm.widgets import studio` keeps working.

The studio lives in the package `tutorial_ldm.studio`; see its docstring.
"""

from .studio import LANGUAGES, STRINGS, Studio, studio

__all__ = ["LANGUAGES", "STRINGS", "Studio", "studio"]
