"""The shipped YAML configs, installed as package data (`mow.configs`) so the CLI finds them from any directory."""
