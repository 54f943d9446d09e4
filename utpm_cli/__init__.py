"""The `utpm` command line: the top of the dependency stack.

Each command is a thin Typer wrapper over a documented function of a lower layer (the library
`utpm`, `model_export`, `index`, `pipeline`, `service`, `loadtest`); nothing below imports this
package. Heavy imports stay inside the commands so that `utpm --help` is fast and a train-only
install still runs the data and training commands.
"""
