"""The daemon as a child process, for the bench, the tests and the tools (`daemon`, `feed`)."""
