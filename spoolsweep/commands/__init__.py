"""Sub-commands of `spoolsweep`, one module each with a `register(app)` function."""
