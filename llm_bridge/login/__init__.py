"""Runs on the login node: team.yaml's schema and rules, rendering, and the `llm-bridge ray` driver."""
