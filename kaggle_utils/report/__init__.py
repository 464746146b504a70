"""Reports and pictures: the out-of-fold report (``evaluate``), exploratory figures (``eda``) and the series viewer
(``view``). Every figure is written with matplotlib's Agg backend, so nothing here needs a display."""
