"""The experiment's stages, one module each: `plan` (00), `environment` (01), `serve` (02-04), `load` (05),
`report` (06). Each takes the run (`RunContext`: its resolved deployment and directory) and returns a typed result
it also writes into the run directory; the notebooks call them."""
