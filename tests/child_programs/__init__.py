"""Small programs and picklable functions that tests run in child processes (stdlib only, so a
child importing them stays small)."""
