"""Security-relevant events: what happened, who did it, from where (DESIGN.md §9)."""
