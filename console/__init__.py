"""The review console: a Starlette app over a local store or a triage output folder."""
