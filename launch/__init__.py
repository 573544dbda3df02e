"""Cluster launchers, shipped inside ipt as `ipt.launch` (see ipt/resources.py); each also runs
as a script: `python launch/tpu.py ...`."""
