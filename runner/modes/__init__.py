"""The front ends: repl (default), cli, server. Each is a thin loop over the engine with
one entry point, `run(llm, args) -> exit status`."""
