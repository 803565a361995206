"""Looking inside models: accounting, spectra, layer scores."""
from .accounting import Accounting, account

__all__ = ["Accounting", "account"]
