"""The client: commands to agents from any process."""
