"""Model builders that work offline (tests, benchmarks, the embedded demo)."""
