"""spoolsweep: the command line that ties the pipeline, the functions and the agent together."""
