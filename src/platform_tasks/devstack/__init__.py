"""The platform on loopback for the demo and the integration tests: a real Sentinel topology,
an SMTP sink, a payment gateway stub, and worker and beat processes."""
