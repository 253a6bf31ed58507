"""spoolsweep's core: read a queue snapshot, parse, group campaigns, decide, write a manifest."""
