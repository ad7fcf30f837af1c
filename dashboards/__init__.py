"""Salvage dashboards and alert rules as code (see dashboards/README.md)."""
