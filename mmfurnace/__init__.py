"""mmfurnace: train, compress, export and serve multimodal classifiers."""

from mmfurnace.errors import ConfigError, InputError, MMFurnaceError

__all__ = ["ConfigError", "InputError", "MMFurnaceError"]
__version__ = "0.1.0"
