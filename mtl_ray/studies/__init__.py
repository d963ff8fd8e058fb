"""Does sharing pay off on this data? `compare` (multi-task against single-task networks, with
Caruana's shuffle control), `transfer` (the label-budget curve from a trained model) and `advise`
(the lecture's three conditions, probed in-process), with their shared `stats` and `probes`."""
