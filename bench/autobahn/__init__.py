"""RFC 6455 conformance comparison with the Autobahn fuzzing client (see README.md)."""
