"""Generation: sampling, the batched engine, the chat service used by the CLI and the server."""
