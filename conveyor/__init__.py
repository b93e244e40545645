"""Conveyor's command line and the embedded servers it can start."""
