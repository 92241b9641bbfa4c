"""Stand-in servers for the stores outrider reads from, each on a free loopback port, faithful to the wire
protocol the SDKs speak (each module documents where it differs from the real service)."""
