"""kaggle_utils: a kit for the RSNA Intracranial Aneurysm Detection competition."""

__version__ = "0.1.0"
