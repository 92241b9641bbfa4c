"""Engine lifecycle: engine processes outrider launches, supervises and stops (the AIBrix 0.8 model-runtime API).

`config` holds the operator's choices (which commands may be launched, the port range, the state directory),
`arguments` turns a request into a command line under those choices, `process` starts, watches and stops process
groups, `records` keeps each engine on disk so that a restarted outrider finds it again, `api` talks to a running
engine over HTTP, `kvcache` reads and writes kvcached's shared-memory segment, and `supervisor` ties them together
in the service's root nursery. Nothing here imports `http`.
"""
