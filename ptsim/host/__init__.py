"""ptsim beside the host's own Linux kernel.

- `scenario`: the scenario format (a list of mm calls by scenario process), its parser, a
  seeded random generator, the Record of what a kernel did, and playing a scenario on ptsim;
- `real`: playing the same scenario on the host kernel, one real process per scenario process;
- `compare`: the differences between two records, and the command that plays a file on both;
- `measure`: fork latency and VmPTE of the host kernel, beside ptsim's page-table bytes;
- `procfs`: readers of /proc/PID/status and /proc/PID/pagemap.

Nothing is imported here: the real processes of `real` load only `real` and `procfs`.
"""
