"""The live path: one Redis reader per process (`hub`), a subscriber per response
(`subscriber`), progress coalescing (`throttle`), what a response sends from Redis before it
goes live (`catch_up`), and the response itself (`response`). The hub's docstring draws it."""
