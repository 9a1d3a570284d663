"""The operator web console: dashboard, message browser, message detail, actions, statistics and
configuration, served by a process of its own beside the engine (docs/console.md)."""
