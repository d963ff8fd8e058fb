"""The `mtl-ray` command line: a thin shell over the typed Python API.

`app` is the dispatcher (the console script's `main`); each other module owns the parsers of one
command group and turns their flags into one API call: `data` (synth, convert, validate), `train`,
`studies` (compare, transfer, advise), `tune`, `registry` (register, predict), `cluster` (submit),
`quickstart`; `jobs` is the entry point of the `jobs/` scripts. `flags` makes the flags that mirror
config keys from the pydantic fields.
"""
