"""``python -m bench.flights``: the NYC 2013 departure-delay model on the full year, and the full-year
training-set build through every engine (see ``bench/flights/README.md``)."""
