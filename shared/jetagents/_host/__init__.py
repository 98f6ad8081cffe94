"""The agent host: a facade over parts that each own their state."""
