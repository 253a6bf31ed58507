"""Thin Lambda handlers, one per step of the pipeline; the same code runs in AWS, LocalStack and `spoolsweep up`."""
