"""Existing engines brought up on this machine from pinned packages: a Flink cluster
and a Spark cluster, each with Beam's job server beside it (docs/scaling-out.md),
what the two share (local_cluster.py), and the program Flink's TaskManagers run to
start a Python SDK worker. Tooling, not pipeline code."""
