"""alignkit: post-train language models from validated recipes.

This module stays empty on purpose: `import alignkit` must not pull in torch or transformers.
"""

__version__ = "0.1.0"
