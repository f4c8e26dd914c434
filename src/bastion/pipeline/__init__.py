"""Generic pure-ASGI stages; :mod:`bastion.engine` composes them in the order of the design."""
