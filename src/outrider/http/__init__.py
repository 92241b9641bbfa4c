"""HTTP routes: parse, call the domain, shape the answer. Nothing here owns state."""
