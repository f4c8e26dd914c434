"""The HTTP response cache stage: a shared cache per RFC 9111 in front of the terminal."""
