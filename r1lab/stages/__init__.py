"""The experiment's stages, one module each (00_plan: `plan`): each takes the run (its resolved deployment and
directory, `r1lab.rundir.RunContext`) and returns a typed result; the notebooks call them."""
