"""Identity and access: users, tokens, API keys, MFA, roles and per-resource grants."""
