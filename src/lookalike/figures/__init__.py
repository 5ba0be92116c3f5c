"""Figures layer: draws what analysis computed (plots, the HTML report, training figures); matplotlib is
imported inside the functions that draw."""
