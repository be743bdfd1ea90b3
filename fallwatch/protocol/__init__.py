"""The wire protocol: topic tree, message contract (v1) and sensor frames. Imports nothing of ours."""
