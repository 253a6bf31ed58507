"""The on-host agent: freeze and snapshot the MTA queue, then replay exactly what was approved."""
