"""The live path: one Redis reader per process (`hub`), a subscriber per response
(`subscriber`), progress coalescing (`throttle`), what a response sends from Redis before it
goes live (`catch_up`), the response itself (`response`), how a live frame reaches the
connection (`transport`), and the clients in step with the hub, written together (`lane`).
The hub's docstring draws it."""
