"""The `anomaly-edge` command line: one module per subcommand, found by `main`."""
