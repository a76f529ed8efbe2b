"""One module per `pgpo` sub-command, each with `main(argv) -> int`."""
