"""Routing: match journaled messages against routes.yaml, run their steps, queue deliveries."""
