"""Engine lifecycle: engine processes outrider launches, supervises and stops (the AIBrix 0.8 model-runtime API).

`config` and `options` hold the operator's choices (which commands may be launched, the port range, the state
directory), `arguments` turns a request into a command line under those choices. `phases` is the state machine
(every transition checked), `engine` an engine's live state and the one way its phase changes, `life` the task that
owns an engine's transitions from its activation to its stop, `launch` the launch (recorded, with a launch id,
before it happens), `stops` stops and their deadline, `adoption` engines found again at start, `controls` sleep,
wake and KV limit, `kvcache` the kvcached segments outrider creates for its engines, `ports` and `artifacts` what
an engine is given, `records` each engine on disk, `process` process groups, identities and launch ids, `api` what
outrider asks a running engine, and `supervisor` the entry point, in the service's root nursery. Nothing here
imports `http`.
"""
