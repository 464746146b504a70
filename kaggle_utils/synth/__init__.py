"""Synthetic competition generator: the real layout, file formats and DICOM quirks, with learnable content."""

from kaggle_utils.synth.competition import make_competition
from kaggle_utils.synth.series import make_series

__all__ = ["make_competition", "make_series"]
